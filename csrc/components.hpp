// Connected components of a binarized map, as horizontal runs.
//
// A DBNet map is mostly background: one streaming pass records the foreground runs of
// each row (reading the map exactly once), and a union-find over runs of neighbouring
// rows links them into 8-connected regions. Work after the scan scales with the number
// of runs, not with the number of pixels.
#pragma once

#include <cstdint>
#include <vector>

#include "box_formation.hpp"

namespace edgedb {

struct Run {
    int32_t y;
    int32_t x0;  // inclusive
    int32_t x1;  // inclusive
};

struct Regions {
    std::vector<Run> runs;             // raster order
    std::vector<int32_t> row_begin;    // runs of row y are [row_begin[y], row_begin[y + 1])
    std::vector<int32_t> label;        // per run: region index, regions numbered in raster
                                       // order of their first pixel
    int32_t count = 0;

    // Runs of the first `limit` regions grouped per region, each group in raster order.
    std::vector<int32_t> member_begin;  // group r is members[member_begin[r] .. member_begin[r+1])
    std::vector<int32_t> members;
};

// Foreground is value > thresh (for uint8: value / 255 > thresh). With `dilate`, the mask
// is first dilated by a 2x2 square (a pixel also lights its right, lower and lower-right
// neighbours), as cv2.dilate with a 2x2 kernel does. Throws InvalidInput for float maps
// holding NaN, inf or values outside [-0.25, 1.25]. Groups the runs of the first `group_limit` regions.
Regions find_regions(const MapView& map, double thresh, bool dilate, int group_limit);

}  // namespace edgedb
