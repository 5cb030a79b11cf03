"""Detection heads, one module per type; importing this package registers them all in layers.LAYER_TYPES."""
from darkpy.heads import contrastive, detection, region, yolo  # noqa: F401  (registration)
from darkpy.heads.base import Head, HeadLoss, LossError

__all__ = ["Head", "HeadLoss", "LossError"]
