#include "components.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "cpu_clones.hpp"

namespace edgedb {
namespace {

// Pixels examined at once when skipping background. The block tests below have no
// branches, so the compiler vectorizes them (SSE/AVX on x86-64, NEON on aarch64).
constexpr int kBlock = 64;

// Inlined into each CPU clone below so the loops are compiled for that clone's target.
#if defined(__GNUC__) || defined(__clang__)
#define EDGEDB_INLINE inline __attribute__((always_inline))
#else
#define EDGEDB_INLINE inline
#endif

// Packs 64 bytes that are each 0 or 1 into a 64-bit mask (bit k from byte k). On
// little-endian CPUs (x86-64, aarch64) each group of 8 bytes becomes 8 bits with one
// multiply: the partial products land in distinct bits of the top byte.
EDGEDB_INLINE uint64_t pack_bits(const uint8_t* bytes) {
    uint64_t bits = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (int group = 0; group < kBlock / 8; ++group) {
        uint64_t eight;
        std::memcpy(&eight, bytes + 8 * group, sizeof eight);
        bits |= ((eight * 0x0102040810204080ULL) >> 56) << (8 * group);
    }
#else
    for (int k = 0; k < kBlock; ++k) bits |= static_cast<uint64_t>(bytes[k]) << k;
#endif
    return bits;
}

// Probabilities from real exports overshoot [0, 1] a little (1.0000001 from a rounded
// sigmoid, more after a bicubic resize of the map), so that is accepted; NaN, inf and
// values far outside, such as logits passed by mistake, are not.
constexpr float kLowest = -0.25f;
constexpr float kHighest = 1.25f;

struct FloatPixels {
    float thresh;
    uint32_t thresh_bits;  // bit pattern of thresh (>= 0)

    explicit FloatPixels(float t) : thresh(t) { std::memcpy(&thresh_bits, &t, sizeof t); }

    // Non-negative floats order like their bit patterns, so v is in [0, thresh] exactly
    // when bits(v) <= bits(thresh): one integer compare per pixel checks both "background"
    // and "valid". Anything else (text, negatives, NaN, inf) is examined per pixel.
    EDGEDB_INLINE bool plain_background(const float* p) const {
        uint32_t top = 0;
        for (int k = 0; k < kBlock; ++k) {
            uint32_t bits;
            std::memcpy(&bits, p + k, sizeof bits);  // a plain load, without aliasing UB
            top = std::max(top, bits);
        }
        return top <= thresh_bits;
    }
    // Bit k set where pixel k of p[0..n) is text; returns true if a pixel is invalid.
    EDGEDB_INLINE bool foreground_bits(const float* p, int n, uint64_t& fg) const {
        uint8_t is_text[kBlock] = {};
        int bad = 0;
        for (int k = 0; k < n; ++k) {
            const float v = p[k];
            is_text[k] = static_cast<uint8_t>(v > thresh);
            bad |= static_cast<int>(!(v >= kLowest)) | static_cast<int>(v > kHighest);  // NaN fails v >= ...
        }
        fg = pack_bits(is_text);
        return bad != 0;
    }
};

struct BytePixels {
    uint8_t thresh;  // foreground is value > thresh

    EDGEDB_INLINE bool plain_background(const uint8_t* p) const {
        uint8_t top = 0;
        for (int k = 0; k < kBlock; ++k) top = std::max(top, p[k]);
        return top <= thresh;
    }
    EDGEDB_INLINE bool foreground_bits(const uint8_t* p, int n, uint64_t& fg) const {
        uint8_t is_text[kBlock] = {};
        for (int k = 0; k < n; ++k) is_text[k] = static_cast<uint8_t>(p[k] > thresh);
        fg = pack_bits(is_text);
        return false;
    }
};

inline int lowest_bit(uint64_t v) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctzll(v);
#else
    int k = 0;
    while (!((v >> k) & 1)) ++k;
    return k;
#endif
}

// Appends the foreground runs of one row; returns false if the row holds a bad value.
// Blocks of plain background are skipped; in the others, runs start and end where the
// foreground bit mask changes, found a set bit at a time.
template <class T, class Pixels>
EDGEDB_INLINE bool scan_row(const T* row, int width, int y, const Pixels& px, std::vector<Run>& out) {
    static_assert(kBlock == 64, "one uint64_t mask per block");
    bool in_run = false, bad = false;
    int start = 0;
    for (int x = 0; x < width; x += kBlock) {
        const int n = std::min(kBlock, width - x);
        if (n == kBlock && px.plain_background(row + x)) {
            if (in_run) out.push_back({y, start, x - 1});
            in_run = false;
            continue;
        }
        uint64_t fg = 0;
        bad |= px.foreground_bits(row + x, n, fg);
        uint64_t changes = fg ^ ((fg << 1) | static_cast<uint64_t>(in_run));
        if (n < kBlock) changes &= (uint64_t{1} << n) - 1;
        while (changes) {
            const int k = lowest_bit(changes);
            changes &= changes - 1;
            if ((fg >> k) & 1) start = x + k;
            else out.push_back({y, start, x + k - 1});
        }
        in_run = (fg >> (n - 1)) & 1;
    }
    if (in_run) out.push_back({y, start, width - 1});
    return !bad;
}

// The row scans, one clone per CPU level (cpu_clones.hpp).
EDGEDB_CPU_CLONES bool scan_row_f32(const float* row, int width, int y, const FloatPixels& px,
                                    std::vector<Run>& out) {
    return scan_row(row, width, y, px, out);
}

EDGEDB_CPU_CLONES bool scan_row_u8(const uint8_t* row, int width, int y, const BytePixels& px,
                                   std::vector<Run>& out) {
    return scan_row(row, width, y, px, out);
}

inline bool scan_any_row(const float* row, int width, int y, const FloatPixels& px, std::vector<Run>& out) {
    return scan_row_f32(row, width, y, px, out);
}

inline bool scan_any_row(const uint8_t* row, int width, int y, const BytePixels& px, std::vector<Run>& out) {
    return scan_row_u8(row, width, y, px, out);
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
        if (!scan_any_row(row, map.width, y, px, sink)) {
            throw InvalidInput("prob map row " + std::to_string(y) +
                               " holds NaN, inf or a value far outside [0, 1]; pass probabilities "
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
        scan_map<float>(map, FloatPixels(static_cast<float>(thresh)), dilate, regions);
    } else {
        scan_map<uint8_t>(map, BytePixels{byte_threshold(thresh)}, dilate, regions);
    }
    label_runs(regions, map.height);
    group_runs(regions, group_limit);
    return regions;
}

}  // namespace edgedb
