#include "geometry.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace edgedb {
namespace {

inline double cross(const PointD& o, const PointD& a, const PointD& b) {
    return (a.x - o.x) * (b.y - o.y) - (a.y - o.y) * (b.x - o.x);
}

inline bool same(const PointD& a, const PointD& b) { return a.x == b.x && a.y == b.y; }

// Eight neighbours, clockwise on screen (y points down), starting east.
constexpr int kDx[8] = {1, 1, 0, -1, -1, -1, 0, 1};
constexpr int kDy[8] = {0, 1, 1, 1, 0, -1, -1, -1};

inline int direction_of(int dx, int dy) {
    static constexpr int kIndex[9] = {5, 6, 7, 4, -1, 0, 3, 2, 1};  // [(dy + 1) * 3 + dx + 1]
    return kIndex[(dy + 1) * 3 + (dx + 1)];
}

double segment_distance(const PointI& p, const PointI& a, const PointI& b) {
    const double dx = static_cast<double>(b.x - a.x), dy = static_cast<double>(b.y - a.y);
    const double px = static_cast<double>(p.x - a.x), py = static_cast<double>(p.y - a.y);
    const double len2 = dx * dx + dy * dy;
    if (len2 == 0) return std::hypot(px, py);
    double t = std::clamp((px * dx + py * dy) / len2, 0.0, 1.0);
    return std::hypot(px - t * dx, py - t * dy);
}

// Douglas-Peucker on the open chain pts[first..last]; appends kept points except `last`.
void simplify_chain(const std::vector<PointI>& pts, std::size_t first, std::size_t last,
                    double epsilon, std::vector<PointI>& out) {
    std::vector<std::pair<std::size_t, std::size_t>> stack{{first, last}};
    std::vector<char> keep(last - first + 1, 0);
    keep[0] = 1;
    while (!stack.empty()) {
        auto [i, j] = stack.back();
        stack.pop_back();
        double worst = -1;
        std::size_t at = i;
        for (std::size_t k = i + 1; k < j; ++k) {
            const double d = segment_distance(pts[k % pts.size()], pts[i % pts.size()],
                                              pts[j % pts.size()]);
            if (d > worst) worst = d, at = k;
        }
        if (worst > epsilon) {
            keep[at - first] = 1;
            stack.push_back({i, at});
            stack.push_back({at, j});
        }
    }
    for (std::size_t k = first; k < last; ++k) {
        if (keep[k - first]) out.push_back(pts[k % pts.size()]);
    }
}

}  // namespace

std::vector<PointD> convex_hull_sorted(const std::vector<PointD>& points) {
    std::vector<PointD> pts;
    pts.reserve(points.size());
    for (const auto& p : points) {
        if (pts.empty() || !same(pts.back(), p)) pts.push_back(p);
    }
    if (pts.size() < 3) return pts;
    std::vector<PointD> hull(2 * pts.size());
    std::size_t k = 0;
    for (const auto& p : pts) {
        while (k >= 2 && cross(hull[k - 2], hull[k - 1], p) <= 0) --k;
        hull[k++] = p;
    }
    for (std::size_t i = pts.size() - 1, lower = k + 1; i-- > 0;) {
        while (k >= lower && cross(hull[k - 2], hull[k - 1], pts[i]) <= 0) --k;
        hull[k++] = pts[i];
    }
    hull.resize(k - 1);
    return hull;
}

MinRect min_area_rect(const std::vector<PointD>& hull) {
    MinRect rect{};
    if (hull.empty()) return rect;
    const std::size_t n = hull.size();
    if (n == 1) {
        rect.corners = {hull[0], hull[0], hull[0], hull[0]};
        return rect;
    }
    // Rotating calipers: the best rectangle has a side on a hull edge. As the edge turns,
    // the points extreme along it (right, left) and across it (far) move forward around
    // the hull, so each pointer makes one lap: O(n) overall.
    auto next = [n](std::size_t k) { return k + 1 == n ? 0 : k + 1; };
    std::size_t right = 0, left = 0, far = 0;
    double best_area = std::numeric_limits<double>::infinity();
    for (std::size_t i = 0; i < n; ++i) {
        const PointD& a = hull[i];
        const PointD& b = hull[next(i)];
        const double len = std::sqrt((b.x - a.x) * (b.x - a.x) + (b.y - a.y) * (b.y - a.y));
        if (len == 0) continue;
        const double ux = (b.x - a.x) / len, uy = (b.y - a.y) / len;
        auto u = [&](std::size_t k) { return (hull[k].x - a.x) * ux + (hull[k].y - a.y) * uy; };
        auto v = [&](std::size_t k) { return std::abs((hull[k].y - a.y) * ux - (hull[k].x - a.x) * uy); };
        if (i == 0) {
            for (std::size_t k = 1; k < n; ++k) {
                if (u(k) > u(right)) right = k;
                if (u(k) < u(left)) left = k;
                if (v(k) > v(far)) far = k;
            }
        } else {
            for (std::size_t step = 0; step < n && u(next(right)) > u(right); ++step) right = next(right);
            for (std::size_t step = 0; step < n && u(next(left)) < u(left); ++step) left = next(left);
            for (std::size_t step = 0; step < n && v(next(far)) > v(far); ++step) far = next(far);
        }
        const double lo_u = std::min(0.0, u(left)), hi_u = std::max(len, u(right)), depth = v(far);
        const double area = (hi_u - lo_u) * depth;
        if (area < best_area) {
            best_area = area;
            // Unit normal pointing into the hull.
            const double side = (hull[far].y - a.y) * ux - (hull[far].x - a.x) * uy >= 0 ? 1.0 : -1.0;
            const double nx = -uy * side, ny = ux * side;
            auto at = [&](double s, double t) { return PointD{a.x + s * ux + t * nx, a.y + s * uy + t * ny}; };
            rect.corners = {at(lo_u, 0), at(hi_u, 0), at(hi_u, depth), at(lo_u, depth)};
            rect.short_side = std::min(hi_u - lo_u, depth);
        }
    }
    rect.corners = order_clockwise(rect.corners);
    return rect;
}

MinRect min_area_rect_of(std::vector<PointI> points) {
    std::sort(points.begin(), points.end(),
              [](const PointI& a, const PointI& b) { return a.y != b.y ? a.y < b.y : a.x < b.x; });
    std::vector<PointD> sorted;
    sorted.reserve(points.size());
    for (const auto& p : points) sorted.push_back({double(p.x), double(p.y)});
    return min_area_rect(convex_hull_sorted(sorted));
}

std::array<PointD, 4> order_clockwise(std::array<PointD, 4> c) {
    std::stable_sort(c.begin(), c.end(), [](const PointD& a, const PointD& b) { return a.x < b.x; });
    // Of the two leftmost corners the upper is top-left; of the two rightmost, top-right.
    const bool left_swap = !(c[1].y > c[0].y);
    const bool right_swap = !(c[3].y > c[2].y);
    const PointD tl = left_swap ? c[1] : c[0], bl = left_swap ? c[0] : c[1];
    const PointD tr = right_swap ? c[3] : c[2], br = right_swap ? c[2] : c[3];
    return {tl, tr, br, bl};
}

double polygon_area(const std::vector<PointD>& poly) {
    double twice = 0;
    for (std::size_t i = 0, n = poly.size(); i < n; ++i) {
        const PointD& a = poly[i];
        const PointD& b = poly[(i + 1) % n];
        twice += a.x * b.y - b.x * a.y;
    }
    return std::abs(twice) / 2;
}

double polygon_perimeter(const std::vector<PointD>& poly) {
    double length = 0;
    for (std::size_t i = 0, n = poly.size(); i < n; ++i) {
        const PointD& a = poly[i];
        const PointD& b = poly[(i + 1) % n];
        length += std::sqrt((b.x - a.x) * (b.x - a.x) + (b.y - a.y) * (b.y - a.y));
    }
    return length;
}

void polygon_spans(const std::vector<PointI>& poly, int row_lo, int row_hi, int col_lo,
                   int col_hi, std::vector<Span>& out) {
    out.clear();
    if (poly.empty()) return;
    int64_t y_min = poly[0].y, y_max = poly[0].y;
    for (const auto& p : poly) y_min = std::min(y_min, p.y), y_max = std::max(y_max, p.y);
    const int64_t first = std::max<int64_t>(y_min, row_lo), last = std::min<int64_t>(y_max, row_hi);
    std::vector<double> crossings;
    std::vector<std::pair<int64_t, int64_t>> pieces;
    const std::size_t n = poly.size();
    for (int64_t y = first; y <= last; ++y) {
        crossings.clear();
        pieces.clear();
        for (std::size_t i = 0; i < n; ++i) {
            const PointI& a = poly[i];
            const PointI& b = poly[(i + 1) % n];
            const int64_t dx = b.x - a.x, dy = b.y - a.y;
            const int64_t e_lo = std::min(a.y, b.y), e_hi = std::max(a.y, b.y);
            if (y < e_lo || y > e_hi) continue;
            const double slope = dy ? double(dx) / double(dy) : 0.0;
            // Interior: the scanline through pixel centres, edges half-open in y.
            if (dy != 0 && y < e_hi) crossings.push_back(a.x + (y - a.y) * slope);
            // The edge's own 8-connected line pixels in this row.
            if (dy == 0) {
                pieces.push_back({std::min(a.x, b.x), std::max(a.x, b.x)});
            } else if (std::llabs(dx) <= std::llabs(dy)) {
                const auto x = static_cast<int64_t>(std::floor(a.x + (y - a.y) * slope + 0.5));
                pieces.push_back({x, x});
            } else {
                const double xa = a.x + (y - 0.5 - a.y) * slope, xb = a.x + (y + 0.5 - a.y) * slope;
                auto lo = static_cast<int64_t>(std::ceil(std::min(xa, xb)));
                auto hi = static_cast<int64_t>(std::floor(std::max(xa, xb)));
                lo = std::max(lo, std::min(a.x, b.x));
                hi = std::min(hi, std::max(a.x, b.x));
                if (lo <= hi) pieces.push_back({lo, hi});
            }
        }
        std::sort(crossings.begin(), crossings.end());
        for (std::size_t k = 0; k + 1 < crossings.size(); k += 2) {
            const auto lo = static_cast<int64_t>(std::ceil(crossings[k]));
            const auto hi = static_cast<int64_t>(std::floor(crossings[k + 1]));
            if (lo <= hi) pieces.push_back({lo, hi});
        }
        std::sort(pieces.begin(), pieces.end());
        for (std::size_t k = 0; k < pieces.size();) {
            int64_t lo = pieces[k].first, hi = pieces[k].second;
            for (++k; k < pieces.size() && pieces[k].first <= hi + 1; ++k) hi = std::max(hi, pieces[k].second);
            lo = std::max<int64_t>(lo, col_lo);
            hi = std::min<int64_t>(hi, col_hi);
            if (lo <= hi) out.push_back({int(y), int(lo), int(hi)});
        }
    }
}

std::vector<PointI> trace_outer_border(const std::vector<uint8_t>& mask, int width, int height) {
    auto set = [&](int64_t x, int64_t y) {
        return x >= 0 && y >= 0 && x < width && y < height && mask[y * width + x];
    };
    std::vector<PointI> border;
    const auto start_at = std::find(mask.begin(), mask.end(), uint8_t{1}) - mask.begin();
    if (start_at >= static_cast<std::ptrdiff_t>(mask.size())) return border;
    const PointI start{start_at % width, start_at / width};
    // Moore-neighbour tracing; the west neighbour of the first pixel is background.
    PointI at = start;
    int back = 4;
    int first_move = -1;
    border.push_back(start);
    for (;;) {
        int move = -1;
        for (int i = 1; i <= 8; ++i) {
            const int d = (back + i) & 7;
            if (set(at.x + kDx[d], at.y + kDy[d])) {
                move = d;
                break;
            }
        }
        if (move < 0) break;  // a single pixel
        // Jacob's stopping criterion: back at the start, about to repeat the first move.
        if (at.x == start.x && at.y == start.y && move == first_move) break;
        if (first_move < 0) first_move = move;
        const int checked = (move + 7) & 7;  // the last background cell examined
        const PointI next{at.x + kDx[move], at.y + kDy[move]};
        back = direction_of(int(at.x + kDx[checked] - next.x), int(at.y + kDy[checked] - next.y));
        at = next;
        border.push_back(at);
    }
    if (border.size() > 1) border.pop_back();  // the start, reached again
    if (border.size() < 3) return border;
    // Keep corners only: drop points where the step direction does not change.
    std::vector<PointI> corners;
    const std::size_t n = border.size();
    for (std::size_t i = 0; i < n; ++i) {
        const PointI& prev = border[(i + n - 1) % n];
        const PointI& cur = border[i];
        const PointI& next = border[(i + 1) % n];
        if (cur.x - prev.x != next.x - cur.x || cur.y - prev.y != next.y - cur.y) corners.push_back(cur);
    }
    return corners;
}

std::vector<PointI> simplify_closed(const std::vector<PointI>& poly, double epsilon) {
    const std::size_t n = poly.size();
    if (n < 3) return poly;
    // Split the ring at the vertex farthest from the first, then simplify both chains.
    std::size_t far = 0;
    double far_d = -1;
    for (std::size_t i = 1; i < n; ++i) {
        const double d = std::hypot(double(poly[i].x - poly[0].x), double(poly[i].y - poly[0].y));
        if (d > far_d) far_d = d, far = i;
    }
    std::vector<PointI> out;
    simplify_chain(poly, 0, far, epsilon, out);
    simplify_chain(poly, far, n, epsilon, out);
    return out;
}

}  // namespace edgedb
