"""Every cfg of the Darknet zoo builds, or is refused with its documented reason.

The folder is ../shared/darknet/cfg; set DARKPY_DARKNET_CFG to Darknet's own cfg/ folder (AlexeyAB/darknet, 87
cfgs) to check all of them. bench/zoo_coverage.py prints the same outcome for any folder.
"""
import importlib.util

import pytest

from conftest import DARKNET_CFG, REPO, SHARED

FOLDERS = [SHARED / "darknet" / "cfg"] + ([DARKNET_CFG] if DARKNET_CFG else [])
CFGS = sorted({cfg for folder in FOLDERS if folder.is_dir() for cfg in folder.glob("*.cfg")})

TEXT_MODEL = "takes inputs=256 values, not an image"
# cfg -> the part of darkpy's refusal that says why. Darknet itself refuses or misreads each of these.
REFUSED = {
    # Darknet reads past its anchors array (mask index 16 with num=16; 31 anchor values): no network to match.
    "cspx-p7-mish.cfg": "anchor index 16 is outside 0..15",
    "cspx-p7-mish_hp.cfg": "has an odd number of values (31)",
    # text and sequence models for Darknet's `rnn` command (C Darknet stops on them with SIGFPE when loading)
    "rnn.cfg": TEXT_MODEL, "rnn.train.cfg": TEXT_MODEL, "gru.cfg": TEXT_MODEL, "lstm.train.cfg": TEXT_MODEL,
    "crnn.train.cfg": TEXT_MODEL,
}


def load_bench():
    spec = importlib.util.spec_from_file_location("zoo_coverage", REPO / "bench" / "zoo_coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


zoo_coverage = load_bench()


@pytest.mark.skipif(not CFGS, reason=f"no zoo cfgs in {FOLDERS[0]} (../shared is absent)")
@pytest.mark.parametrize("cfg", CFGS, ids=[f"{cfg.parent.parent.name}/{cfg.name}" for cfg in CFGS])
def test_zoo_cfg_builds_or_gives_its_documented_refusal(cfg):
    reason = zoo_coverage.refusal(cfg)
    if cfg.name in REFUSED:
        assert reason is not None and REFUSED[cfg.name] in reason, reason
        assert reason.startswith(f"{cfg}:")  # names the file and line
    else:
        assert reason is None


def test_coverage_script_prints_built_and_refused(tmp_path, capsys):
    (tmp_path / "good.cfg").write_text("[net]\nwidth=4\nheight=4\nchannels=1\n[maxpool]\nsize=2\nstride=2\n")
    (tmp_path / "bad.cfg").write_text("[net]\nwidth=4\nheight=4\nchannels=1\n[local]\n")
    assert zoo_coverage.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("refused  bad.cfg: ") and "[local]" in lines[0]
    assert lines[1] == "built    good.cfg"
    assert lines[2] == f"{tmp_path}: 1 of 2 cfgs built, 1 refused"
