"""What every `mpirun -n T` entry point does first: pick the device and thread count, make the
communicator, and agree across ranks on start-up errors (each rank prints them; none hangs)."""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

import torch

from .comm import Communicator, MPIComm, make_communicator

R = TypeVar("R")


def local_ranks() -> int:
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def setup(device: str | None, threads: int | None, comm: str | None = None,
          plugin_transport: str = "auto") -> tuple[torch.device, Communicator]:
    """The device of this rank (cuda:rank % n_gpus, or cpu) and its communicator (`comm`, see
    cli.add_device_flags; default mpi4py on CPU, nccl on CUDA). On CPU each rank gets `threads`
    torch threads (default: the cores divided among the ranks of this machine). ValueError for a
    communicator the device cannot use."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        if comm not in (None, "mpi4py"):
            raise ValueError(f"--comm {comm} needs --device cuda")
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_ranks()))
        return torch.device("cpu"), make_communicator(torch.device("cpu"))
    if comm == "mpi4py":
        raise ValueError("--comm mpi4py reduces CPU tensors: use --device cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device")
    probe = make_communicator(torch.device("cpu"))  # rank, to pick the GPU
    dev = torch.device("cuda", probe.rank % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    if comm == "pt_plugin":
        from .plugin_comm import PluginComm

        return dev, PluginComm(probe if isinstance(probe, MPIComm) else None, dev, plugin_transport)
    return dev, make_communicator(dev)


def start_on_all_ranks(comm: Communicator, what: Callable[[], R],
                       errors: tuple[type[BaseException], ...] = (ValueError,)) -> R:
    """Run `what` on every rank; if it raised `errors` on any rank, every rank prints the first
    rank's message and exits with status 2 (instead of the others hanging in a collective)."""
    result, error = None, None
    try:
        result = what()
    except errors as e:
        error = str(e)
    failed = [(r, e) for r, e in enumerate(comm.all_errors(error)) if e is not None]
    if failed:
        rank, message = failed[0]
        where = f"rank {rank}: " if comm.world_size > 1 and rank != comm.rank else ""
        print(f"error: {where}{message}", file=sys.stderr, flush=True)
        sys.exit(2)
    return result
