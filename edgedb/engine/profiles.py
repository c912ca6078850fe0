"""Optimization profiles from the detector's own shape policy.

A TensorRT engine with dynamic shapes accepts input shapes between a profile's min and
max, and its kernels are tuned for the profile's opt shape. edgedb chooses these from
what ``EdgeDetector`` will actually feed the engine:

- ``input_size`` mode letterboxes every image into one size: a static profile
  (min = opt = max in height and width), the fastest engine and what the DLA needs.
- ``limit`` mode resizes each image by the side limit and pads to multiples of 32, so the
  network input depends on the image size. The profile spans the padded shapes of the
  image sizes the user states (their cameras and scans). opt is the shape of the *first*
  stated size: TensorRT picks its kernels for opt, so the frame size an application sees
  most should come first.

The batch range is 1..``max_batch``, with opt at 1: ``detect`` and ``stream`` run one
frame at a time, and ``detect_batch`` runs larger batches within the range.
Nothing here imports TensorRT.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Sequence

from edgedb.errors import InvalidInputError
from edgedb.preprocess import padded_to, resized_shape

# Frame sizes an application is likely to see when it states none: HD and Full HD video
# in both orientations, VGA, and a 4:3 phone photo scaled to 1440 on the long side.
DEFAULT_IMAGE_SIZES: tuple[tuple[int, int], ...] = (
    (720, 1280), (1280, 720), (1080, 1920), (1920, 1080), (480, 640), (640, 480), (1080, 1440),
)

Shape3 = tuple[int, int, int]  # (batch, height, width)


@dataclass(frozen=True)
class Profile:
    """One optimization profile of the image input, as (batch, height, width) triples.

    ``layout`` says where those go in the input tensor: ``"NHWC"`` (edgedb's rewritten
    graphs take uint8 BGR frames) or ``"NCHW"`` (a plain export).
    """

    min: Shape3
    opt: Shape3
    max: Shape3
    layout: str = "NHWC"

    def __post_init__(self):
        for name in ("min", "opt", "max"):
            value = getattr(self, name)
            if len(value) != 3 or any(int(v) <= 0 for v in value):
                raise InvalidInputError(f"profile {name} shape must be three positive ints (N, H, W), not {value}")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if not all(lo <= mid <= hi for lo, mid, hi in zip(self.min, self.opt, self.max)):
            raise InvalidInputError(
                f"profile shapes must satisfy min <= opt <= max in every dimension, got "
                f"min {format_shape(self.min)}, opt {format_shape(self.opt)}, max {format_shape(self.max)}"
            )
        if self.layout not in ("NHWC", "NCHW"):
            raise InvalidInputError(f"layout must be 'NHWC' or 'NCHW', not {self.layout!r}")

    @property
    def static(self) -> bool:
        """One frame size (the batch may still vary)."""
        return self.min[1:] == self.opt[1:] == self.max[1:]

    @property
    def max_batch(self) -> int:
        return self.max[0]

    def tensor_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) as shapes of the input tensor, channels in place."""
        return tuple(tensor_shape(s, self.layout) for s in (self.min, self.opt, self.max))  # type: ignore[return-value]

    def covers(self, shape: Sequence[int]) -> bool:
        """Whether an input tensor shape lies within the profile."""
        n, h, w = frame_dims(shape, self.layout)
        return all(lo <= v <= hi for lo, v, hi in zip(self.min, (n, h, w), self.max))

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]), data.get("layout", "NHWC"))

    def describe(self) -> str:
        return f"min {format_shape(self.min)}, opt {format_shape(self.opt)}, max {format_shape(self.max)}"


def tensor_shape(nhw: Sequence[int], layout: str = "NHWC") -> tuple[int, ...]:
    n, h, w = (int(v) for v in nhw)
    return (n, h, w, 3) if layout == "NHWC" else (n, 3, h, w)


def frame_dims(shape: Sequence[int], layout: str = "NHWC") -> Shape3:
    """(batch, height, width) of an input tensor shape."""
    if len(shape) != 4:
        raise InvalidInputError(f"an image input has 4 dimensions, not shape {tuple(shape)}")
    n, a, b, c = (int(v) for v in shape)
    return (n, a, b) if layout == "NHWC" else (n, b, c)


def format_shape(nhw: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in nhw)


def parse_shape(text: str) -> Shape3:
    """``"1x736x1312"`` -> ``(1, 736, 1312)`` (batch x height x width, as trtexec writes shapes)."""
    try:
        values = tuple(int(v) for v in str(text).lower().split("x"))
    except ValueError:
        values = ()
    if len(values) != 3 or any(v <= 0 for v in values):
        raise InvalidInputError(f"expected a shape NxHxW such as 1x736x1312, not {text!r}")
    return values  # type: ignore[return-value]


def _check_max_batch(max_batch: int) -> int:
    if int(max_batch) < 1:
        raise InvalidInputError(f"max_batch must be at least 1, not {max_batch}")
    return int(max_batch)


def static_profile(input_size: tuple[int, int], max_batch: int = 1, *, stride: int = 32,
                   layout: str = "NHWC") -> Profile:
    """The profile of ``input_size`` mode: every frame is letterboxed into (height, width)."""
    height, width = (int(v) for v in input_size)
    if height <= 0 or width <= 0 or height % stride or width % stride:
        raise InvalidInputError(f"input_size sides must be positive multiples of {stride}, got {input_size}")
    max_batch = _check_max_batch(max_batch)
    return Profile((1, height, width), (1, height, width), (max_batch, height, width), layout)


def limit_profile(
    image_sizes: Optional[Iterable[tuple[int, int]]] = None,
    *,
    limit_side_len: int = 736,
    limit_type: str = "min",
    max_side_len: int = 4096,
    stride: int = 32,
    max_batch: int = 1,
    layout: str = "NHWC",
) -> Profile:
    """The profile of ``limit`` mode covering the frames the detector makes from images of
    ``image_sizes`` ((height, width) pairs; default ``DEFAULT_IMAGE_SIZES``).

    min and max are the smallest and largest padded height and width over those sizes; opt
    is the first size's frame (see the module doc).
    """
    sizes = list(image_sizes) if image_sizes is not None else list(DEFAULT_IMAGE_SIZES)
    if not sizes:
        raise InvalidInputError("image_sizes is empty: state at least one (height, width)")
    frames = []
    for size in sizes:
        try:
            height, width = (int(v) for v in size)
        except (TypeError, ValueError):
            raise InvalidInputError(f"image sizes are (height, width) pairs, not {size!r}") from None
        if height <= 0 or width <= 0:
            raise InvalidInputError(f"image sizes must be positive, not {size!r}")
        ch, cw = resized_shape(height, width, limit_side_len, limit_type, stride=stride, max_side_len=max_side_len)
        frames.append((padded_to(ch, stride), padded_to(cw, stride)))
    max_batch = _check_max_batch(max_batch)
    heights, widths = [h for h, _ in frames], [w for _, w in frames]
    return Profile(
        (1, min(heights), min(widths)),
        (1, *frames[0]),
        (max_batch, max(heights), max(widths)),
        layout,
    )


def explicit_profile(min_shape: Shape3, opt_shape: Optional[Shape3], max_shape: Shape3, *,
                     stride: int = 32, layout: str = "NHWC") -> Profile:
    """A profile stated by hand (``--min-shape/--opt-shape/--max-shape``); opt defaults to min
    in batch and to max in height and width. Height and width must be multiples of ``stride``."""
    opt_shape = opt_shape or (min_shape[0], max_shape[1], max_shape[2])
    for name, shape in (("min", min_shape), ("opt", opt_shape), ("max", max_shape)):
        if shape[1] % stride or shape[2] % stride:
            raise InvalidInputError(f"{name} shape {format_shape(shape)}: height and width must be multiples of {stride}")
    return Profile(min_shape, opt_shape, max_shape, layout)
