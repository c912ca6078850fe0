// Small planar-geometry helpers for box formation: hulls, minimum-area rectangles,
// polygon rasterization and simplification, border tracing. No state, no allocation
// beyond the vectors they return or fill.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace edgedb {

struct PointD {
    double x, y;
};

struct PointI {
    int64_t x, y;
};

// A minimum-area bounding rectangle: corners clockwise from the top-left (image axes,
// y pointing down), and the length of its shorter side.
struct MinRect {
    std::array<PointD, 4> corners;
    double short_side;
};

struct Span {
    int y, x0, x1;  // inclusive
};

// Convex hull by Andrew's monotone chain. `points` must be sorted by (y, x); duplicates
// are allowed. Returns the hull without repeating the first vertex.
std::vector<PointD> convex_hull_sorted(const std::vector<PointD>& points);

// Rotating-edge search over the hull edges (the optimal rectangle has a side on one).
MinRect min_area_rect(const std::vector<PointD>& hull);

// Hull of arbitrary integer points (sorted here), then its minimum-area rectangle.
MinRect min_area_rect_of(std::vector<PointI> points);

// Puts four corners in the order top-left, top-right, bottom-right, bottom-left.
std::array<PointD, 4> order_clockwise(std::array<PointD, 4> corners);

double polygon_area(const std::vector<PointD>& poly);       // absolute, shoelace
double polygon_perimeter(const std::vector<PointD>& poly);  // closed

// Row spans of the pixels a filled polygon with integer vertices covers: pixels whose
// centres are inside, plus the 8-connected line pixels of its edges, as cv2.fillPoly
// draws it. Rows are clipped to [row_lo, row_hi] and spans to [col_lo, col_hi]; `out` is
// cleared first.
void polygon_spans(const std::vector<PointI>& poly, int row_lo, int row_hi, int col_lo,
                   int col_hi, std::vector<Span>& out);

// Outer border of the 8-connected region containing the first set pixel of a binary
// image (row-major, `width` x `height`, the first set pixel found in raster order),
// traced clockwise; only corner points are kept (each straight piece is one segment).
std::vector<PointI> trace_outer_border(const std::vector<uint8_t>& mask, int width, int height);

// Douglas-Peucker simplification of a closed polygon.
std::vector<PointI> simplify_closed(const std::vector<PointI>& poly, double epsilon);

}  // namespace edgedb
