#include "components.hpp"

#include <algorithm>
#include <string>

namespace edgedb {
namespace {

// Pixels examined at once when skipping background; the per-block reductions below
// have no branches so the compiler vectorizes them (SSE/AVX on x86, NEON on aarch64).
constexpr int kBlock = 32;

struct FloatPixels {
    float thresh;
    static bool bad(float v) { return !(v >= 0.f) || v > 1.f; }  // NaN fails v >= 0
    bool above(float v) const { return v > thresh; }
};

struct BytePixels {
    uint8_t thresh;  // foreground is value > thresh
    static bool bad(uint8_t) { return false; }
    bool above(uint8_t v) const { return v > thresh; }
};

// Appends the foreground runs of one row; returns false if the row holds a bad value.
template <class T, class Pixels>
bool scan_row(const T* row, int width, int y, const Pixels& px, std::vector<Run>& out) {
    bool in_run = false;
    int start = 0;
    int bad = 0;
    auto step = [&](int x) {
        const bool fg = px.above(row[x]);
        if (fg != in_run) {
            if (fg) start = x;
            else out.push_back({y, start, x - 1});
            in_run = fg;
        }
    };
    int x = 0;
    for (; x + kBlock <= width; x += kBlock) {
        int any = 0, block_bad = 0;
        for (int k = 0; k < kBlock; ++k) {
            any |= px.above(row[x + k]);
            block_bad |= Pixels::bad(row[x + k]);
        }
        bad |= block_bad;
        if (!any) {
            if (in_run) {
                out.push_back({y, start, x - 1});
                in_run = false;
            }
            continue;
        }
        for (int k = 0; k < kBlock; ++k) step(x + k);
    }
    for (; x < width; ++x) {
        bad |= Pixels::bad(row[x]);
        step(x);
    }
    if (in_run) out.push_back({y, start, width - 1});
    return !bad;
}

// Union of two sorted run lists of one row, each run first grown one pixel to the right
// (clipped to the row): the 2x2 dilation of rows y-1 and y seen from row y.
void dilated_row(const Run* a, const Run* a_end, const Run* b, const Run* b_end, int y,
                 int width, std::vector<Run>& out) {
    const std::size_t first = out.size();
    auto push = [&](int x0, int x1) {
        x1 = std::min(x1 + 1, width - 1);
        if (out.size() > first && out.back().x1 + 1 >= x0) {
            out.back().x1 = std::max(out.back().x1, x1);
        } else {
            out.push_back({y, x0, x1});
        }
    };
    while (a != a_end || b != b_end) {
        const bool take_a = b == b_end || (a != a_end && a->x0 <= b->x0);
        const Run& r = take_a ? *a++ : *b++;
        push(r.x0, r.x1);
    }
}

inline int32_t find_root(std::vector<int32_t>& parent, int32_t i) {
    while (parent[i] != i) {
        parent[i] = parent[parent[i]];  // path halving
        i = parent[i];
    }
    return i;
}

// Keeps the smaller index as root, so a root is its region's first run in raster order.
inline void unite(std::vector<int32_t>& parent, int32_t a, int32_t b) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a < b) parent[b] = a;
    else if (b < a) parent[a] = b;
}

template <class T, class Pixels>
void scan_map(const MapView& map, const Pixels& px, bool dilate, Regions& regions) {
    auto& runs = regions.runs;
    auto& row_begin = regions.row_begin;
    row_begin.assign(static_cast<std::size_t>(map.height) + 1, 0);
    std::vector<Run> raw_prev, raw_cur;
    const auto* base = static_cast<const unsigned char*>(map.data);
    for (int y = 0; y < map.height; ++y) {
        const T* row = reinterpret_cast<const T*>(base + y * map.row_stride_bytes);
        row_begin[y] = static_cast<int32_t>(runs.size());
        std::vector<Run>& sink = dilate ? raw_cur : runs;
        if (dilate) raw_cur.clear();
        if (!scan_row(row, map.width, y, px, sink)) {
            throw InvalidInput("prob map row " + std::to_string(y) +
                               " holds NaN, inf or a value outside [0, 1]; pass probabilities "
                               "(apply a sigmoid to logits) and check the model output");
        }
        if (dilate) {
            dilated_row(raw_cur.data(), raw_cur.data() + raw_cur.size(), raw_prev.data(),
                        raw_prev.data() + raw_prev.size(), y, map.width, runs);
            std::swap(raw_prev, raw_cur);
        }
    }
    row_begin[map.height] = static_cast<int32_t>(runs.size());
}

// Links 8-connected runs of consecutive rows, then numbers regions in raster order.
void label_runs(Regions& regions, int height) {
    const auto& runs = regions.runs;
    const auto n = static_cast<int32_t>(runs.size());
    std::vector<int32_t> parent(n);
    for (int32_t i = 0; i < n; ++i) parent[i] = i;
    for (int y = 1; y < height; ++y) {
        int32_t p = regions.row_begin[y - 1];
        const int32_t p_end = regions.row_begin[y];
        for (int32_t r = regions.row_begin[y]; r < regions.row_begin[y + 1]; ++r) {
            // 8-connectivity: runs touch if their x ranges overlap after growing by one.
            while (p < p_end && runs[p].x1 + 1 < runs[r].x0) ++p;
            for (int32_t q = p; q < p_end && runs[q].x0 <= runs[r].x1 + 1; ++q) unite(parent, r, q);
        }
    }
    regions.label.resize(n);
    int32_t count = 0;
    for (int32_t i = 0; i < n; ++i) {
        const int32_t root = find_root(parent, i);
        regions.label[i] = root == i ? count++ : regions.label[root];
    }
    regions.count = count;
}

// Counting sort of the runs of regions [0, limit) by region; raster order is kept.
void group_runs(Regions& regions, int limit) {
    const int32_t groups = std::min<int32_t>(regions.count, std::max(limit, 0));
    auto& begin = regions.member_begin;
    begin.assign(static_cast<std::size_t>(groups) + 1, 0);
    const auto n = static_cast<int32_t>(regions.runs.size());
    for (int32_t i = 0; i < n; ++i) {
        if (regions.label[i] < groups) ++begin[regions.label[i] + 1];
    }
    for (int32_t g = 0; g < groups; ++g) begin[g + 1] += begin[g];
    regions.members.resize(begin[groups]);
    std::vector<int32_t> fill(begin.begin(), begin.end() - 1);
    for (int32_t i = 0; i < n; ++i) {
        if (regions.label[i] < groups) regions.members[fill[regions.label[i]]++] = i;
    }
}

// For thresh in [0, 1]: the byte t such that v > t exactly when v / 255 > thresh in float32,
// as a float map compares (255 when no byte passes: v > 255 never holds).
uint8_t byte_threshold(double thresh) {
    const float t = static_cast<float>(thresh);
    for (int b = 0; b < 256; ++b) {
        if (static_cast<float>(b) / 255.f > t) return static_cast<uint8_t>(b - 1);
    }
    return 255;
}

}  // namespace

Regions find_regions(const MapView& map, double thresh, bool dilate, int group_limit) {
    Regions regions;
    if (map.type == PixelType::Float32) {
        scan_map<float>(map, FloatPixels{static_cast<float>(thresh)}, dilate, regions);
    } else {
        scan_map<uint8_t>(map, BytePixels{byte_threshold(thresh)}, dilate, regions);
    }
    label_runs(regions, map.height);
    group_runs(regions, group_limit);
    return regions;
}

}  // namespace edgedb
