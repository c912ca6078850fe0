#include "threshold_band.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>

#include "cpu_clones.hpp"

namespace edgedb {
namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

// Rows are visited this far (pixels) beyond D, so that no pixel whose float32 value
// reaches thresh_min is missed by rounding; the value test then decides.
constexpr double kReachMargin = 0.1;

// Runs are widened to whole AVX2 vectors of pixels, so that the vector loop has no
// remainder to finish one pixel at a time (about 8% of the time on 50-pixel runs).
// Pixels a widened run takes in are farther than D and fail the value test.
constexpr int kRunMultiple = 8;

struct Interval {
    double lo = kInfinity;  // empty while lo > hi
    double hi = -kInfinity;
};

Interval unite(const Interval& a, const Interval& b) {
    return {std::min(a.lo, b.lo), std::max(a.hi, b.hi)};
}

Interval intersect(const Interval& a, const Interval& b) {
    return {std::max(a.lo, b.lo), std::min(a.hi, b.hi)};
}

// The x with lo <= slope * x + offset <= hi.
Interval solve_between(double slope, double offset, double lo, double hi) {
    if (slope == 0.0) return (offset >= lo && offset <= hi) ? Interval{-kInfinity, kInfinity} : Interval{};
    const double first = (lo - offset) / slope, second = (hi - offset) / slope;
    return {std::min(first, second), std::max(first, second)};
}

// The chord that the line at height y cuts from the disk of radius r around (cx, cy).
Interval disk_chord(double cx, double cy, double r, double y) {
    const double h2 = r * r - (y - cy) * (y - cy);
    if (h2 < 0.0) return {};
    const double h = std::sqrt(h2);
    return {cx - h, cx + h};
}

struct Edge {
    double ax, ay;  // start
    double dx, dy;  // end - start
    double ux, uy;  // unit direction
    double length;
};

// The x, relative to the edge's start, of the points of row ry (relative too) that the
// edge draws: those within `reach` of it, but for the disk around its end. The end is the
// next edge's start, drawn with that edge, and no farther from a point than that edge is
// (one disk per corner instead of two: 10% fewer pixels for words 55 px high). The
// strip beside the edge and the disk at its start make a convex set, so the union of
// their rows is one interval.
Interval edge_row(const Edge& e, double reach, double ry) {
    // Beside the edge: 0 <= along <= length and |across| <= reach, both linear in x.
    const Interval beside = intersect(solve_between(e.ux, e.uy * ry, 0.0, e.length),
                                      solve_between(-e.uy, e.ux * ry, -reach, reach));
    return unite(beside, disk_chord(0.0, 0.0, reach, ry));
}

// The hot loop, over one row's run of pixels. Along and across are recomputed from the
// column index rather than summed step by step, so that rounding does not build up along
// long runs. A few flops per pixel, vectorized by the compiler (SSE2 or AVX2 on x86-64,
// NEON on aarch64; a vector sqrt needs -fno-math-errno). AVX2 without FMA computes the
// same numbers as SSE2.
EDGEDB_CPU_CLONES void draw_run(float* out, int count, float along0, float across0, float along_step,
                                float across_step, float end, float thresh_max, float floor) {
    for (int k = 0; k < count; ++k) {
        const float column = static_cast<float>(k);
        const float along = along0 + along_step * column;
        const float across = across0 + across_step * column;
        // Before the start or past the end of the edge, the nearest point is that end.
        const float beyond = std::min(along, 0.0f) + std::max(along - end, 0.0f);
        const float value = thresh_max - std::sqrt(beyond * beyond + across * across);
        out[k] = (value >= floor && value > out[k]) ? value : out[k];
    }
}

void draw_edge(const MutableFloatMap& map, const Edge& e, const BandPolygon& polygon, float thresh_max,
               float floor) {
    const double reach = polygon.distance + kReachMargin;
    // Rows of the strip (its corners are the ends moved by +-reach across) and the disk.
    const double across_y = reach * std::abs(e.ux);
    const double top = std::max(std::ceil(std::min(e.ay - reach, std::min(e.ay, e.ay + e.dy) - across_y)), 0.0);
    const double bottom = std::min(std::floor(std::max(e.ay + reach, std::max(e.ay, e.ay + e.dy) + across_y)),
                                   map.height - 1.0);
    if (top > bottom) return;  // also keeps the casts below in range
    // Along and across, scaled to threshold units, are linear in the column.
    const double scale = polygon.scale;
    const float along_step = static_cast<float>(scale * e.ux);
    const float across_step = static_cast<float>(-scale * e.uy);
    const float end = static_cast<float>(scale * e.length);
    for (int y = static_cast<int>(top); y <= static_cast<int>(bottom); ++y) {
        const double ry = y - e.ay;
        const Interval run = edge_row(e, reach, ry);
        const double first = std::max(std::ceil(run.lo + e.ax), 0.0);
        const double last = std::min(std::floor(run.hi + e.ax), map.width - 1.0);
        if (!(first <= last)) continue;
        const int exact = static_cast<int>(last - first) + 1;
        const int count = std::min((exact + kRunMultiple - 1) / kRunMultiple * kRunMultiple, map.width);
        const int begin = std::min(static_cast<int>(first), map.width - count);
        const double rx = begin - e.ax;
        const float along0 = static_cast<float>(scale * (e.ux * rx + e.uy * ry));
        const float across0 = static_cast<float>(scale * (e.ux * ry - e.uy * rx));
        draw_run(map.data + y * map.row_stride + begin, count, along0, across0, along_step, across_step, end,
                 thresh_max, floor);
    }
}

std::string number(double value) {
    std::ostringstream text;
    text << value;
    return text.str();
}

void require(bool ok, const std::string& message) {
    if (!ok) throw InvalidInput(message);
}

void validate(const MutableFloatMap& map, const std::vector<BandPolygon>& polygons, double thresh_max) {
    require(map.height >= 0 && map.width >= 0 && map.row_stride >= map.width &&
                (map.data != nullptr || map.height == 0 || map.width == 0),
            "threshold map has a bad shape or stride; pass a C-contiguous (height, width) float32 array");
    require(std::isfinite(thresh_max), "thresh_max must be a finite number");
    for (std::size_t i = 0; i < polygons.size(); ++i) {
        const BandPolygon& p = polygons[i];
        const std::string index = "[" + std::to_string(i) + "]";
        require(std::isfinite(p.distance) && p.distance > 0.0, "distances" + index +
                " (the polygon's D) must be a finite number > 0, got " + number(p.distance));
        // (With scale 0 every visited pixel, also those just beyond D, would pass the value test.)
        require(std::isfinite(p.scale) && p.scale > 0.0, "scales" + index +
                " must be a finite number > 0 (thresh_min < thresh_max), got " + number(p.scale));
        require(std::all_of(p.xy, p.xy + 2 * p.points, [](double v) { return std::isfinite(v); }),
                "polygons" + index + " has a non-finite coordinate");
    }
}

}  // namespace

void draw_threshold_band(const MutableFloatMap& map, const std::vector<BandPolygon>& polygons,
                         double thresh_max) {
    validate(map, polygons, thresh_max);
    if (map.height == 0 || map.width == 0) return;
    const float top = static_cast<float>(thresh_max);
    for (const BandPolygon& polygon : polygons) {
        // One float step below thresh_min: rounding thresh_max - scale * D must not drop
        // a pixel that the reference, which writes every value, raises.
        const float floor = std::nextafter(static_cast<float>(thresh_max - polygon.scale * polygon.distance),
                                           -std::numeric_limits<float>::infinity());
        for (std::size_t i = 0; i < polygon.points; ++i) {
            const std::size_t j = (i + 1) % polygon.points;  // closed
            Edge e;
            e.ax = polygon.xy[2 * i];
            e.ay = polygon.xy[2 * i + 1];
            e.dx = polygon.xy[2 * j] - e.ax;
            e.dy = polygon.xy[2 * j + 1] - e.ay;
            e.length = std::hypot(e.dx, e.dy);
            if (!(e.length > 0.0)) continue;  // a repeated point: no edge
            e.ux = e.dx / e.length;
            e.uy = e.dy / e.length;
            draw_edge(map, e, polygon, top, floor);
        }
    }
}

}  // namespace edgedb
