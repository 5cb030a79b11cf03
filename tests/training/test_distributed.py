"""Darknet's -gpus: `darkpy train --gpus 0,1` launches one training process per GPU itself, with the environment
torchrun gives its workers, so that a run launched by darkpy is the run torchrun would make. Checked on the CPU
(gloo): the same two-process run started by torchrun and by distributed.launch ends in the same weights."""
import os
import subprocess
import sys

import pytest
import torch

from darkpy.cli import main as cli_main
from darkpy.commands.train import train_worker
from darkpy.training.distributed import launch
from darkpy.training.settings import TrainOptions
from helpers.tiny_training import make_dataset, write_cfg

RUN = {"max_batches": 2, "batch": 4, "seed": 2, "workers": 0, "threads": 1, "device": "cpu", "progress": False}


def _data_with_backup(data, backup):
    """The same dataset with its snapshots in another folder."""
    text = "".join(line + "\n" for line in data.read_text().splitlines() if not line.startswith("backup="))
    path = backup.parent / f"{backup.name}.data"
    path.write_text(text + f"backup={backup}\n")
    return path


def test_launch_trains_as_torchrun_does(tmp_path):
    data, cfg = make_dataset(tmp_path, images=6), write_cfg(tmp_path)
    by_torchrun, by_launch = tmp_path / "torchrun", tmp_path / "launch"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "darkpy", "train", "--data", str(_data_with_backup(data, by_torchrun)), "--cfg", str(cfg),
               "--max-batches", "2", "--batch", "4", "--seed", "2", "--workers", "0", "--threads", "1",
               "--no-progress", "--device", "cpu"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]

    options = TrainOptions(data=str(_data_with_backup(data, by_launch)), cfg=str(cfg), **RUN)
    assert launch(train_worker, (options,), world=2) == 0
    expected = (by_torchrun / "tiny_final.weights").read_bytes()
    assert (by_launch / "tiny_final.weights").read_bytes() == expected


def test_a_failing_worker_is_the_runs_exit_code(tmp_path):
    options = TrainOptions(data=str(tmp_path / "missing.data"), cfg=str(tmp_path / "missing.cfg"), **RUN)
    assert launch(train_worker, (options,), world=2) == 1


def test_several_gpus_without_cuda_are_an_error(tmp_path, capsys):
    data, cfg = make_dataset(tmp_path, images=2), write_cfg(tmp_path)
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has two GPUs: --gpus 0,1 would train")
    code = cli_main(["train", "--data", str(data), "--cfg", str(cfg), "--gpus", "0,1"])
    assert code == 2
    assert "--gpus 0,1:" in capsys.readouterr().err


def test_gpu_numbers_are_checked(capsys):
    for wrong in ("0,a", "1,1", "-1"):
        with pytest.raises(SystemExit) as stopped:
            cli_main(["train", "--data", "x.data", "--cfg", "x.cfg", f"--gpus={wrong}"])
        assert stopped.value.code == 2 and f"{wrong!r}" in capsys.readouterr().err


def _fail_or_hang(seconds: float, ignore_sigterm: bool) -> None:
    """Rank 0 fails at once; the others hang, as a worker waiting in a collective for the failed one would."""
    import signal
    import time
    if int(os.environ["RANK"]) == 0:
        os._exit(3)
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)


def test_a_failed_worker_stops_the_others(monkeypatch):
    """As torchrun: the failure's code at once, the other workers terminated (killed after the grace period when
    they do not stop), not left waiting for the failed one."""
    import time
    import darkpy.training.distributed as distributed
    monkeypatch.setattr(distributed, "STOP_GRACE_SECONDS", 1.0)
    for ignore_sigterm in (False, True):
        started = time.monotonic()
        assert launch(_fail_or_hang, (120.0, ignore_sigterm), world=2) == 3
        assert time.monotonic() - started < 60
