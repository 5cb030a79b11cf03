"""Shared test fixtures: where ../shared lies, and skips when it is absent."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DARKPY_SHARED_DIR", REPO.parent / "shared"))
ORACLE = Path(os.environ.get("DARKPY_ORACLE_DIR", SHARED / "oracle"))
# Darknet's own cfg/ folder (AlexeyAB/darknet), for the tests over cfgs ../shared does not hold; unset: skipped.
DARKNET_CFG = Path(os.environ["DARKPY_DARKNET_CFG"]) if os.environ.get("DARKPY_DARKNET_CFG") else None
# Fixtures in the oracle's format made for this repository: C Darknet's outputs (numbers) only, never its files.
LOCAL_FIXTURES = REPO / "tests" / "fixtures"


def require(path: Path) -> Path:
    """Skip the calling test with a clear reason when a ../shared resource is missing."""
    if not path.exists():
        pytest.skip(f"{path} is absent (tests that compare with C Darknet need ../shared beside the checkout)")
    return path


@pytest.fixture
def shared_dir() -> Path:
    return require(SHARED)


@pytest.fixture
def oracle_dir() -> Path:
    return require(ORACLE)


@pytest.fixture(autouse=True, scope="session")
def onnx_exports_in_a_folder_of_the_run(tmp_path_factory):
    """The onnxruntime backend caches its exports (darkpy/evaluation/onnx_backend.py); the tests' go to a folder of
    this run, never to the user's ~/.cache. Commands run in subprocesses inherit it."""
    saved = os.environ.get("DARKPY_CACHE_DIR")
    os.environ["DARKPY_CACHE_DIR"] = str(tmp_path_factory.mktemp("darkpy-cache"))
    yield
    if saved is None:
        os.environ.pop("DARKPY_CACHE_DIR", None)
    else:
        os.environ["DARKPY_CACHE_DIR"] = saved
