"""Darknet's plain layer types, one module per family; importing this package registers them all in LAYER_TYPES.

The detection heads are in darkpy.heads (which imports layers.base): they register when that package is imported,
as darkpy.model does."""
from darkpy.layers import attention, basic, conv, pool, recurrent, resample, route  # noqa: F401  (registration)
from darkpy.layers.base import LAYER_TYPES, BuildContext, Layer

# Sections Darknet knows that darkpy deliberately does not build (they fail at load time, named).
UNSUPPORTED = {
    "local": "locally connected layers are not supported",
    "normalization": "local response normalization is not supported",
    "deconvolutional": "deconvolution is not supported",
}

__all__ = ["LAYER_TYPES", "BuildContext", "Layer", "UNSUPPORTED"]
