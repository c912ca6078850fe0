// Box formation for DBNet probability maps: the public interface of the C++ core.
//
// Binarize the map, find 8-connected regions (the shrunk text kernels), score each,
// dilate ("unclip") its polygon by D' = A' * r' / L' and return the text boxes.
// Pure C++17: no Python here, no global state, every call is reentrant.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "errors.hpp"

namespace edgedb {

enum class PixelType { Float32, UInt8 };  // uint8 maps hold probability * 255
enum class ScoreMode { Fast, Slow };      // mean inside the box / inside the region contour
enum class BoxType { Quad, Poly };

// A read-only 2-D map; rows may be padded (row_stride_bytes >= width * item size).
struct MapView {
    const void* data = nullptr;
    int height = 0;
    int width = 0;
    std::ptrdiff_t row_stride_bytes = 0;
    PixelType type = PixelType::Float32;
};

struct BoxParams {
    double thresh = 0.3;
    double box_thresh = 0.6;
    double unclip_ratio = 1.5;
    int max_candidates = 1000;
    double min_size = 3.0;
    ScoreMode score_mode = ScoreMode::Fast;
    BoxType box_type = BoxType::Quad;
    bool use_dilation = false;
    int dest_height = 0;  // 0: stay in map pixels
    int dest_width = 0;
};

struct Box {
    std::vector<float> xy;  // x0, y0, x1, y1, ...; quads: clockwise from the top-left
    float score = 0.f;
};

// Validates `params` and `map`, then forms the boxes. Throws InvalidInput.
std::vector<Box> form_boxes(const MapView& map, const BoxParams& params);

}  // namespace edgedb
