// The threshold map of DBNet's training labels near text edges: the band that
// edgedb.train.labels.make_labels draws (its NumPy reference is _draw_threshold_numpy in
// edgedb/train/labels.py). Pure C++17: no Python here, no global state, reentrant.
#pragma once

#include <cstddef>
#include <vector>

#include "errors.hpp"

namespace edgedb {

// A writable float32 map; row y starts at data + y * row_stride.
struct MutableFloatMap {
    float* data = nullptr;
    int height = 0;
    int width = 0;
    std::ptrdiff_t row_stride = 0;  // in floats
};

// One text polygon: its closed outline and the paper's offset D.
struct BandPolygon {
    const double* xy = nullptr;  // x0, y0, x1, y1, ... (pixels; the centre of pixel
                                 // (row, col) is x = col, y = row)
    std::size_t points = 0;
    double distance = 0;  // D > 0
    double scale = 0;     // (thresh_max - thresh_min) / D, > 0
};

// Raises every pixel closer than D to an edge of a polygon to thresh_max - scale * d,
// d its distance to that edge, where that is larger than the pixel's value: the maximum
// over edges makes d the distance to the nearest one. Values below the polygon's
// thresh_min (thresh_max - scale * D) are never written, so pixels farther than D keep
// theirs. float32 arithmetic, as the NumPy reference. Throws InvalidInput for a
// non-finite coordinate or thresh_max, or a D or scale that is not finite and > 0.
void draw_threshold_band(const MutableFloatMap& map, const std::vector<BandPolygon>& polygons,
                         double thresh_max);

}  // namespace edgedb
