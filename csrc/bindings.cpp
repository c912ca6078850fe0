// The only file that knows about Python: checks what NumPy hands over, then runs the
// core with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "box_formation.hpp"
#include "threshold_band.hpp"

namespace py = pybind11;

namespace {

// A value of the wrong type; raised as edgedb.errors.InvalidInputTypeError (a TypeError).
class InvalidType : public std::invalid_argument {
   public:
    using std::invalid_argument::invalid_argument;
};

edgedb::ScoreMode parse_score_mode(const std::string& name) {
    if (name == "fast") return edgedb::ScoreMode::Fast;
    if (name == "slow") return edgedb::ScoreMode::Slow;
    throw edgedb::InvalidInput("score_mode must be 'fast' or 'slow', not '" + name + "'");
}

edgedb::BoxType parse_box_type(const std::string& name) {
    if (name == "quad") return edgedb::BoxType::Quad;
    if (name == "poly") return edgedb::BoxType::Poly;
    throw edgedb::InvalidInput("box_type must be 'quad' or 'poly', not '" + name + "'");
}

edgedb::MapView view_of(const py::array& prob) {
    edgedb::MapView view;
    if (prob.dtype().is(py::dtype::of<float>())) {
        view.type = edgedb::PixelType::Float32;
    } else if (prob.dtype().is(py::dtype::of<uint8_t>())) {
        view.type = edgedb::PixelType::UInt8;
    } else {
        throw InvalidType("prob must be float32 (probabilities) or uint8 (probability * 255), not " +
                             std::string(py::str(prob.dtype())));
    }
    if (prob.ndim() != 2) {
        throw edgedb::InvalidInput("prob must be a 2-D (height, width) map, got " + std::to_string(prob.ndim()) +
                              " dimensions; for an (N, 1, H, W) model output pass prob[i, 0]");
    }
    if (prob.shape(0) == 0 || prob.shape(1) == 0) {
        throw edgedb::InvalidInput("prob map is empty (" + std::to_string(prob.shape(0)) + "x" +
                                   std::to_string(prob.shape(1)) + "); it needs at least one row and column");
    }
    if (prob.strides(1) != prob.itemsize()) {
        throw edgedb::InvalidInput("prob columns must be adjacent in memory (column stride " +
                              std::to_string(prob.strides(1)) + " bytes); pass np.ascontiguousarray(prob)");
    }
    view.data = prob.data();
    view.height = static_cast<int>(prob.shape(0));
    view.width = static_cast<int>(prob.shape(1));
    view.row_stride_bytes = prob.strides(0);
    if (prob.shape(0) > (1 << 30) || prob.shape(1) > (1 << 30)) throw edgedb::InvalidInput("prob map is too large");
    return view;
}

py::tuple form_boxes(const py::array& prob, double thresh, double box_thresh, double unclip_ratio,
                     int max_candidates, double min_size, const std::string& score_mode,
                     const std::string& box_type, bool use_dilation, int dest_height, int dest_width) {
    edgedb::BoxParams params;
    params.thresh = thresh;
    params.box_thresh = box_thresh;
    params.unclip_ratio = unclip_ratio;
    params.max_candidates = max_candidates;
    params.min_size = min_size;
    params.score_mode = parse_score_mode(score_mode);
    params.box_type = parse_box_type(box_type);
    params.use_dilation = use_dilation;
    params.dest_height = dest_height;
    params.dest_width = dest_width;
    const edgedb::MapView view = view_of(prob);

    std::vector<edgedb::Box> boxes;
    {
        py::gil_scoped_release release;
        boxes = edgedb::form_boxes(view, params);
    }
    std::size_t total = 0;
    for (const auto& b : boxes) total += b.xy.size() / 2;
    py::array_t<float> points({static_cast<py::ssize_t>(total), py::ssize_t{2}});
    py::array_t<int32_t> counts(static_cast<py::ssize_t>(boxes.size()));
    py::array_t<float> scores(static_cast<py::ssize_t>(boxes.size()));
    float* out = points.mutable_data();
    for (std::size_t i = 0; i < boxes.size(); ++i) {
        out = std::copy(boxes[i].xy.begin(), boxes[i].xy.end(), out);
        counts.mutable_at(i) = static_cast<int32_t>(boxes[i].xy.size() / 2);
        scores.mutable_at(i) = boxes[i].score;
    }
    return py::make_tuple(points, counts, scores);
}

py::array array_argument(const py::handle& value, const std::string& name) {
    if (!py::isinstance<py::array>(value)) {
        throw InvalidType(name + " must be a numpy array, not " +
                          std::string(py::str(py::type::handle_of(value).attr("__name__"))));
    }
    return py::reinterpret_borrow<py::array>(value);
}

void require_dtype(const py::array& array, const py::dtype& dtype, const std::string& name) {
    if (!array.dtype().is(dtype)) {
        throw InvalidType(name + " must be " + std::string(py::str(dtype)) + ", not " +
                          std::string(py::str(array.dtype())));
    }
}

std::string shape_of(const py::array& array) { return py::str(py::tuple(array.attr("shape"))); }

edgedb::MutableFloatMap writable_map_of(py::array map) {
    require_dtype(map, py::dtype::of<float>(), "threshold map");
    if (map.ndim() != 2) {
        throw edgedb::InvalidInput("threshold map must be 2-D (height, width), got shape " + shape_of(map));
    }
    if (!(map.flags() & py::array::c_style)) {
        throw edgedb::InvalidInput(
            "threshold map must be C-contiguous; draw into np.ascontiguousarray(map) and copy back");
    }
    if (!map.writeable()) {
        throw edgedb::InvalidInput("threshold map is read-only; pass a writable array (map.copy())");
    }
    if (map.shape(0) > (1 << 30) || map.shape(1) > (1 << 30)) {
        throw edgedb::InvalidInput("threshold map is too large");
    }
    edgedb::MutableFloatMap view;
    view.data = static_cast<float*>(map.mutable_data());
    view.height = static_cast<int>(map.shape(0));
    view.width = static_cast<int>(map.shape(1));
    view.row_stride = view.width;
    return view;
}

// One float64 value per polygon (any stride).
std::vector<double> per_polygon(const py::handle& value, const std::string& name, std::size_t count) {
    const py::array array = array_argument(value, name);
    require_dtype(array, py::dtype::of<double>(), name);
    if (array.ndim() != 1 || static_cast<std::size_t>(array.shape(0)) != count) {
        throw edgedb::InvalidInput(name + " must hold one value per polygon (" + std::to_string(count) +
                                   "), got shape " + shape_of(array));
    }
    const auto values = array.unchecked<double, 1>();
    std::vector<double> out(count);
    for (std::size_t i = 0; i < count; ++i) out[i] = values(static_cast<py::ssize_t>(i));
    return out;
}

void draw_threshold_band(const py::object& map, const py::sequence& polygons, const py::object& distances,
                         const py::object& scales, double thresh_max) {
    const edgedb::MutableFloatMap view = writable_map_of(array_argument(map, "threshold map"));
    const std::size_t count = polygons.size();
    const std::vector<double> distance = per_polygon(distances, "distances", count);
    const std::vector<double> scale = per_polygon(scales, "scales", count);
    std::vector<py::array> held;  // keeps the points alive while the GIL is released
    std::vector<edgedb::BandPolygon> bands(count);
    for (std::size_t i = 0; i < count; ++i) {
        const std::string name = "polygons[" + std::to_string(i) + "]";
        held.push_back(array_argument(polygons[i], name));
        const py::array& points = held.back();
        require_dtype(points, py::dtype::of<double>(), name);
        if (points.ndim() != 2 || points.shape(1) != 2) {
            throw edgedb::InvalidInput(name + " must have shape (N, 2), got " + shape_of(points));
        }
        if (!(points.flags() & py::array::c_style)) {
            throw edgedb::InvalidInput(name + " must be C-contiguous; pass np.ascontiguousarray(points)");
        }
        bands[i].xy = static_cast<const double*>(points.data());
        bands[i].points = static_cast<std::size_t>(points.shape(0));
        bands[i].distance = distance[i];
        bands[i].scale = scale[i];
    }
    py::gil_scoped_release release;
    edgedb::draw_threshold_band(view, bands, thresh_max);
}

// Errors come from edgedb.errors, looked up when raised (no import cycle at load time).
void raise_from_errors_module(const char* name, const char* message) {
    py::object cls = py::module_::import("edgedb.errors").attr(name);
    PyErr_SetString(cls.ptr(), message);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "edgedb's C++ core (private: use edgedb.boxes_from_prob and edgedb.train.labels.make_labels)";
    py::register_exception_translator([](std::exception_ptr error) {
        try {
            if (error) std::rethrow_exception(error);
        } catch (const edgedb::InvalidInput& e) {
            raise_from_errors_module("InvalidInputError", e.what());
        } catch (const InvalidType& e) {
            raise_from_errors_module("InvalidInputTypeError", e.what());
        }
    });
    m.def("form_boxes", &form_boxes, py::arg("prob"), py::arg("thresh"), py::arg("box_thresh"),
          py::arg("unclip_ratio"), py::arg("max_candidates"), py::arg("min_size"), py::arg("score_mode"),
          py::arg("box_type"), py::arg("use_dilation"), py::arg("dest_height"), py::arg("dest_width"),
          "Forms text boxes; returns (points (M, 2) float32, counts (N,) int32, scores (N,) float32).");
    m.def("draw_threshold_band", &draw_threshold_band, py::arg("threshold"), py::arg("polygons"),
          py::arg("distances"), py::arg("scales"), py::arg("thresh_max"),
          "Raises the threshold map near the polygons' edges, in place (see edgedb/train/labels.py).");
}
