"""Darknet's layer types, one module per family; importing this package registers them all in LAYER_TYPES."""
from darkpy.layers import attention, basic, conv, heads, pool, resample, route  # noqa: F401  (registration)
from darkpy.layers.base import LAYER_TYPES, BuildContext, Layer

# Sections Darknet knows that darkpy deliberately does not build (they fail at load time, named).
UNSUPPORTED = {
    "rnn": "recurrent layers are not supported",
    "gru": "recurrent layers are not supported",
    "lstm": "recurrent layers are not supported",
    "crnn": "recurrent layers are not supported",
    "conv_lstm": "recurrent layers are not supported",
    "history": "recurrent layers are not supported",
    "contrastive": "contrastive learning layers are not supported",
    "detection": "the YOLOv1 [detection] layer is not supported",
    "local": "locally connected layers are not supported",
    "normalization": "local response normalization is not supported",
    "deconvolutional": "deconvolution is not supported",
}

__all__ = ["LAYER_TYPES", "BuildContext", "Layer", "UNSUPPORTED"]
