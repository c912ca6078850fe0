// The only file that knows about Python: checks what NumPy hands over, then runs the
// core with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "box_formation.hpp"

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

// Errors come from edgedb.errors, looked up when raised (no import cycle at load time).
void raise_from_errors_module(const char* name, const char* message) {
    py::object cls = py::module_::import("edgedb.errors").attr(name);
    PyErr_SetString(cls.ptr(), message);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "edgedb's C++ core (private: use edgedb.boxes_from_prob)";
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
}
