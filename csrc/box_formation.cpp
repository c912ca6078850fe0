#include "box_formation.hpp"

#include <polyclipping/clipper.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "components.hpp"
#include "geometry.hpp"

namespace edgedb {
namespace {

void require(bool ok, const std::string& message) {
    if (!ok) throw InvalidInput(message);
}

void validate(const MapView& map, const BoxParams& p) {
    auto in_unit = [](double v) { return std::isfinite(v) && v >= 0 && v <= 1; };
    require(in_unit(p.thresh), "thresh must be a number in [0, 1]");
    require(in_unit(p.box_thresh), "box_thresh must be a number in [0, 1]");
    require(std::isfinite(p.unclip_ratio) && p.unclip_ratio >= 0,
            "unclip_ratio must be a finite number >= 0 (1.5 is usual)");
    require(p.max_candidates >= 0, "max_candidates must be >= 0");
    require(std::isfinite(p.min_size) && p.min_size >= 0, "min_size must be a finite number >= 0");
    require((p.dest_height > 0) == (p.dest_width > 0) && p.dest_height >= 0,
            "dest_size must be two positive integers (height, width) or None");
    require(map.height > 0 && map.width > 0, "prob map is empty; it needs at least one row and column");
    require(map.data != nullptr, "prob map has no data");
    const std::ptrdiff_t item = map.type == PixelType::Float32 ? 4 : 1;
    require(std::abs(map.row_stride_bytes) >= map.width * item && map.row_stride_bytes % item == 0,
            "prob map rows overlap or are misaligned; pass np.ascontiguousarray(prob)");
}

// Reads pixels of either map type as probabilities, summing row pieces.
class ProbReader {
   public:
    explicit ProbReader(const MapView& map)
        : base_(static_cast<const unsigned char*>(map.data)), map_(map) {}

    double sum(int y, int x0, int x1) const {
        const unsigned char* row = base_ + y * map_.row_stride_bytes;
        double total = 0;
        if (map_.type == PixelType::Float32) {
            const auto* v = reinterpret_cast<const float*>(row);
            for (int x = x0; x <= x1; ++x) total += v[x];
        } else {
            uint32_t bytes = 0;
            for (int x = x0; x <= x1; ++x) bytes += row[x];
            total = bytes / 255.0;
        }
        return total;
    }

    double at(int y, int x) const { return sum(y, x, x); }

   private:
    const unsigned char* base_;
    const MapView& map_;
};

// One region's runs and the work done on them; the local mask is built on first need.
class Region {
   public:
    Region(const Regions& regions, int index) {
        const auto begin = regions.member_begin[index], end = regions.member_begin[index + 1];
        runs_.reserve(end - begin);
        for (auto i = begin; i < end; ++i) runs_.push_back(regions.runs[regions.members[i]]);
        x_lo_ = y_lo_ = std::numeric_limits<int>::max();
        for (const Run& r : runs_) {
            x_lo_ = std::min(x_lo_, r.x0), x_hi_ = std::max(x_hi_, r.x1);
            y_lo_ = std::min(y_lo_, r.y), y_hi_ = std::max(y_hi_, r.y);
        }
    }

    // The hull of a pixel set is the hull of each row's two extreme pixels.
    MinRect min_rect() const {
        std::vector<PointD> extremes;
        extremes.reserve(2 * runs_.size());
        for (std::size_t i = 0; i < runs_.size();) {
            const int y = runs_[i].y, x0 = runs_[i].x0;
            while (i + 1 < runs_.size() && runs_[i + 1].y == y) ++i;
            extremes.push_back({double(x0), double(y)});
            extremes.push_back({double(runs_[i].x1), double(y)});
            ++i;
        }
        return min_area_rect(convex_hull_sorted(extremes));
    }

    // Mean probability over the region and the holes it encloses: what filling the
    // region's outer contour covers.
    double contour_score(const ProbReader& prob) {
        double total = 0;
        std::size_t count = 0;
        bool may_have_holes = false;
        for (std::size_t i = 0; i < runs_.size(); ++i) {
            total += prob.sum(runs_[i].y, runs_[i].x0, runs_[i].x1);
            count += runs_[i].x1 - runs_[i].x0 + 1;
            may_have_holes |= i > 0 && runs_[i - 1].y == runs_[i].y;  // a hole needs two runs in a row
        }
        if (may_have_holes) {
            const auto& m = mask();
            const int w = mask_width(), h = mask_height();
            std::vector<uint8_t> outside(m.size(), 0);
            std::vector<int> stack;
            auto seed = [&](int x, int y) {
                const int k = y * w + x;
                if (!m[k] && !outside[k]) outside[k] = 1, stack.push_back(k);
            };
            for (int x = 0; x < w; ++x) seed(x, 0), seed(x, h - 1);
            for (int y = 0; y < h; ++y) seed(0, y), seed(w - 1, y);
            while (!stack.empty()) {  // background is 4-connected where regions are 8-connected
                const int k = stack.back();
                stack.pop_back();
                const int x = k % w, y = k / w;
                if (x > 0) seed(x - 1, y);
                if (x + 1 < w) seed(x + 1, y);
                if (y > 0) seed(x, y - 1);
                if (y + 1 < h) seed(x, y + 1);
            }
            for (int k = 0; k < w * h; ++k) {
                if (!m[k] && !outside[k]) total += prob.at(y_lo_ + k / w, x_lo_ + k % w), ++count;
            }
        }
        return total / static_cast<double>(count);
    }

    // Outer border in map coordinates, corners only.
    std::vector<PointI> border() {
        auto points = trace_outer_border(mask(), mask_width(), mask_height());
        for (auto& p : points) p.x += x_lo_, p.y += y_lo_;
        return points;
    }

   private:
    int mask_width() const { return x_hi_ - x_lo_ + 1; }
    int mask_height() const { return y_hi_ - y_lo_ + 1; }

    const std::vector<uint8_t>& mask() {
        if (mask_.empty()) {
            mask_.assign(static_cast<std::size_t>(mask_width()) * mask_height(), 0);
            for (const Run& r : runs_) {
                auto* row = mask_.data() + static_cast<std::size_t>(r.y - y_lo_) * mask_width();
                std::fill(row + (r.x0 - x_lo_), row + (r.x1 - x_lo_) + 1, uint8_t{1});
            }
        }
        return mask_;
    }

    std::vector<Run> runs_;
    int x_lo_ = 0, x_hi_ = 0, y_lo_ = 0, y_hi_ = 0;
    std::vector<uint8_t> mask_;
};

constexpr double kSnap = 1e-3;  // pixels: closer than this to a whole pixel is on it

// Removes round-off before truncating to whole pixels: 258.99999 is 259, so an
// axis-aligned box does not lose a row to float noise.
double snap(double v) {
    const double whole = std::nearbyint(v);
    return std::abs(v - whole) < kSnap ? whole : v;
}

// Mean probability inside a polygon, rasterized as cv2.fillPoly does inside the window
// of its bounding box (the reference scores the same way).
double polygon_score(const ProbReader& prob, const std::vector<PointD>& poly, int height, int width,
                     std::vector<Span>& spans) {
    double x_min = poly[0].x, x_max = poly[0].x, y_min = poly[0].y, y_max = poly[0].y;
    for (const auto& p : poly) {
        x_min = std::min(x_min, p.x), x_max = std::max(x_max, p.x);
        y_min = std::min(y_min, p.y), y_max = std::max(y_max, p.y);
    }
    auto clip = [](double v, int hi) { return static_cast<int>(std::clamp(v, 0.0, double(hi))); };
    const int x_lo = clip(std::floor(x_min), width - 1), x_hi = clip(std::ceil(x_max), width - 1);
    const int y_lo = clip(std::floor(y_min), height - 1), y_hi = clip(std::ceil(y_max), height - 1);
    // Vertices are snapped, then truncated toward zero relative to the window, as an
    // int32 cast does.
    auto truncate = [](double v, int origin) { return origin + static_cast<int64_t>(snap(v) - origin); };
    std::vector<PointI> vertices;
    vertices.reserve(poly.size());
    for (const auto& p : poly) vertices.push_back({truncate(p.x, x_lo), truncate(p.y, y_lo)});
    polygon_spans(vertices, y_lo, y_hi, x_lo, x_hi, spans);
    double total = 0;
    std::size_t count = 0;
    for (const Span& s : spans) total += prob.sum(s.y, s.x0, s.x1), count += s.x1 - s.x0 + 1;
    return count ? total / static_cast<double>(count) : 0.0;
}

// Offsets a polygon outward by D' = A' * r' / L' with round joins (Clipper 6.4.2, the
// library pyclipper wraps, with its default arc tolerance). Points are truncated to
// integers (after snapping) as pyclipper does.
ClipperLib::Paths unclip(const std::vector<PointD>& poly, double ratio) {
    const double perimeter = polygon_perimeter(poly);
    if (!(perimeter > 0)) return {};
    const double distance = polygon_area(poly) * ratio / perimeter;
    ClipperLib::Path path;
    path.reserve(poly.size());
    for (const auto& p : poly) {
        path.emplace_back(static_cast<ClipperLib::cInt>(snap(p.x)), static_cast<ClipperLib::cInt>(snap(p.y)));
    }
    ClipperLib::ClipperOffset offset;
    offset.AddPath(path, ClipperLib::jtRound, ClipperLib::etClosedPolygon);
    ClipperLib::Paths solution;
    offset.Execute(solution, distance);
    return solution;
}

std::vector<PointI> to_points(const ClipperLib::Paths& paths) {
    std::vector<PointI> points;
    for (const auto& path : paths) {
        for (const auto& p : path) points.push_back({p.X, p.Y});
    }
    return points;
}

std::vector<PointD> to_double(const std::vector<PointI>& points) {
    std::vector<PointD> out;
    out.reserve(points.size());
    for (const auto& p : points) out.push_back({double(p.x), double(p.y)});
    return out;
}

// Scales map coordinates to the destination, rounds them to whole pixels (half to even,
// as np.round; PaddleOCR-style post-processing reports whole pixels) and clips them.
class Destination {
   public:
    Destination(const MapView& map, const BoxParams& p)
        : w_(p.dest_width ? p.dest_width : map.width), h_(p.dest_height ? p.dest_height : map.height),
          sx_(double(w_) / map.width), sy_(double(h_) / map.height) {}

    void append(double x, double y, std::vector<float>& xy) const {
        xy.push_back(static_cast<float>(std::clamp(std::nearbyint(x * sx_), 0.0, double(w_))));
        xy.push_back(static_cast<float>(std::clamp(std::nearbyint(y * sy_), 0.0, double(h_))));
    }

   private:
    int w_, h_;
    double sx_, sy_;
};

}  // namespace

std::vector<Box> form_boxes(const MapView& map, const BoxParams& p) {
    validate(map, p);
    const Regions regions = find_regions(map, p.thresh, p.use_dilation, p.max_candidates);
    const ProbReader prob(map);
    const Destination dest(map, p);
    const int groups = static_cast<int>(regions.member_begin.size()) - 1;
    std::vector<Box> boxes;
    std::vector<Span> spans;
    for (int g = 0; g < groups; ++g) {
        Region region(regions, g);
        const MinRect kernel = region.min_rect();
        if (kernel.short_side < p.min_size) continue;

        std::vector<PointD> shape;
        if (p.box_type == BoxType::Quad) {
            shape.assign(kernel.corners.begin(), kernel.corners.end());
        } else {
            const auto border = region.border();
            const auto as_double = to_double(border);
            shape = to_double(simplify_closed(border, 0.002 * polygon_perimeter(as_double)));
            if (shape.size() < 4) continue;
        }
        const double mean = p.score_mode == ScoreMode::Fast
                                ? polygon_score(prob, shape, map.height, map.width, spans)
                                : region.contour_score(prob);
        const double score = std::clamp(mean, 0.0, 1.0);  // maps may overshoot [0, 1] slightly
        if (score < p.box_thresh) continue;

        const ClipperLib::Paths grown = unclip(shape, p.unclip_ratio);
        if (grown.empty() || (p.box_type == BoxType::Poly && grown.size() != 1)) continue;
        const MinRect outer = min_area_rect_of(to_points(grown));
        if (outer.short_side < p.min_size + 2) continue;

        Box box;
        box.score = static_cast<float>(score);
        if (p.box_type == BoxType::Quad) {
            for (const auto& c : outer.corners) dest.append(c.x, c.y, box.xy);
        } else {
            for (const auto& q : grown[0]) dest.append(double(q.X), double(q.Y), box.xy);
        }
        boxes.push_back(std::move(box));
    }
    return boxes;
}

}  // namespace edgedb
