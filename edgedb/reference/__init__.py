"""Plain NumPy/OpenCV references of the C++ routines: slow, obvious, and the oracles
the tests compare the native code against."""

from edgedb.reference.boxes import boxes_from_prob_reference, order_quad

__all__ = ["boxes_from_prob_reference", "order_quad"]
