"""Several training processes as Darknet's `-gpus`: started by `torchrun --nproc_per_node N -m darkpy train ...`,
or by `darkpy train --gpus 0,1` itself (`launch`: one process per GPU, with torchrun's environment).

src/network_kernels.cu train_networks: each process trains `batch` images per iteration and the gradients are
summed, which equals Darknet's N nets with learning_rate*N whose weights are averaged (sync_nets); the rolling
batch-norm statistics are averaged every 4 iterations. With one process every function here does nothing.
"""
import multiprocessing
import multiprocessing.connection
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

BUFFER_SYNC_EVERY = 4  # Darknet's sync_nets interval, in iterations
STOP_GRACE_SECONDS = 30.0  # launch: after a worker failed, how long the others may take to save and stop


@dataclass
class Distributed:
    """torchrun's environment: rank, world size, local rank."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Distributed":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def start(self, device: str) -> None:
        """Join the process group (NCCL on CUDA, gloo on the CPU)."""
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
            torch.distributed.init_process_group(backend)

    def stop(self) -> None:
        """Leave the process group together: a process that tears gloo down while another one still talks to it
        can abort at exit ("terminate called without an active exception")."""
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def device_name(self, requested: str) -> str:
        """Each process on its own GPU (LOCAL_RANK) when CUDA is asked for or automatic."""
        if self.enabled and torch.cuda.is_available() and requested in ("auto", "cuda"):
            return f"cuda:{self.local_rank}"
        return requested

    def agreed_seed(self, seed: Optional[int], drawn: int) -> int:
        """The seed every process uses: the given one, or `drawn` in rank 0."""
        if seed is not None:
            return seed
        if not self.enabled:
            return drawn
        value = torch.tensor([drawn if self.main else 0], dtype=torch.int64)
        torch.distributed.broadcast(value, 0)
        return int(value.item())

    def broadcast_model(self, model: torch.nn.Module) -> None:
        """All processes start from rank 0's weights and statistics."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                torch.distributed.broadcast(tensor.data, 0)

    def sum_gradients(self, model: torch.nn.Module) -> None:
        if not self.enabled:
            return
        for p in model.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)

    def mean_loss(self, cost: float, device: torch.device) -> float:
        """train_networks: the mean of the processes' losses."""
        if not self.enabled:
            return cost
        total = torch.tensor([cost], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(total)
        return float(total.item()) / self.world

    def sync_buffers(self, model: torch.nn.Module, iteration: int) -> None:
        """Darknet's sync_nets every 4 iterations: the rolling batch-norm statistics averaged."""
        if not self.enabled or iteration % BUFFER_SYNC_EVERY != 0:
            return
        for b in model.buffers():
            if b.dtype.is_floating_point:
                torch.distributed.all_reduce(b)
                b.div_(self.world)

    def any_stops(self, stop: bool, device: torch.device) -> bool:
        """True in every process when one of them was asked to stop."""
        if not self.enabled:
            return stop
        flag = torch.tensor([1.0 if stop else 0.0], device=device)
        torch.distributed.all_reduce(flag)
        return bool(flag.item() > 0)


def _free_port() -> int:
    """A TCP port nobody listens on, for the processes' rendezvous on this machine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(worker: Callable[..., None], args: Sequence[object], world: int,
           cuda_devices: Optional[Sequence[int]] = None) -> int:
    """Run `worker(*args)` in `world` new processes on this machine, each with the environment torchrun gives
    its workers (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so that they train as one run exactly as
    under torchrun; with cuda_devices, the processes see those GPUs only (CUDA_VISIBLE_DEVICES) and process r
    uses the r-th. Returns 0 when every process ended with 0, else the first non-zero exit code. Ctrl-C reaches
    the workers too (one process group): they save `_last` and stop, and this waits for them."""
    environment = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(world),
                   "LOCAL_WORLD_SIZE": str(world)}
    if cuda_devices is not None:
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in cuda_devices)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited torch or CUDA state
    processes = [context.Process(target=_run_worker, args=(worker, args, {**environment, "RANK": str(rank),
                                                                          "LOCAL_RANK": str(rank)}))
                 for rank in range(world)]
    for process in processes:
        process.start()
    return _wait_for(processes)


def _run_worker(worker: Callable[..., None], args: Sequence[object], environment: dict) -> None:
    os.environ.update(environment)
    worker(*args)


def _wait_for(processes: List[multiprocessing.Process]) -> int:
    """Wait for every process (also through Ctrl-C, which they handle themselves); their first failure's code.
    When one fails, the others are stopped as torchrun stops its workers — SIGTERM (they save `_last`), then
    SIGKILL after STOP_GRACE_SECONDS — since they would wait for the failed one in their next collective until
    gloo's or NCCL's timeout."""
    running, first_failure, kill_at = list(processes), 0, None
    while running:
        timeout = None if kill_at is None else max(0.0, kill_at - time.monotonic())
        try:
            multiprocessing.connection.wait([process.sentinel for process in running], timeout)
        except KeyboardInterrupt:
            continue  # the workers got it too, and are saving their weights
        for process in [p for p in running if p.exitcode is not None]:
            running.remove(process)
            if process.exitcode != 0 and not first_failure:
                first_failure = _exit_code(process.exitcode)
                kill_at = time.monotonic() + STOP_GRACE_SECONDS
                for other in running:
                    other.terminate()
        if kill_at is not None and time.monotonic() >= kill_at:
            for other in running:
                other.kill()
            kill_at = None  # their sentinels fire as they die
    return first_failure


def _exit_code(exitcode: int) -> int:
    """A process's exit status as a shell gives it: 128 + N when signal N ended it."""
    return exitcode if exitcode >= 0 else 128 - exitcode
