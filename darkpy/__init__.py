"""darkpy: Darknet's .cfg/.weights networks as PyTorch modules, with Darknet's numbers."""

__version__ = "0.1.0"
