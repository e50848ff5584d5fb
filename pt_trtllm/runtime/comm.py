"""Communicators: one small interface over mpi4py (CPU tensors) and torch.distributed NCCL (CUDA
tensors) that counts every collective and its bytes, by kind: "merge" (the hidden-state
all-reduces inside the forward pass), "other" (the rest of a generation step: the token
broadcast) and any kind a caller names for a one-off check (e.g. "digest", after a generation)."""

from __future__ import annotations

import os
import socket
from collections import Counter

import torch


class Communicator:
    """Sum all-reduce and broadcast among the ranks of one model; counts calls and bytes."""

    name = "none"

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self.calls: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    def reset_counts(self) -> None:
        self.calls.clear()
        self.bytes.clear()

    def _count(self, kind: str, t: torch.Tensor) -> None:
        self.calls[kind] += 1
        self.bytes[kind] += t.numel() * t.element_size()

    @torch.compiler.disable  # counted in Python: compiled decode steps call it between graphs
    def all_reduce(self, t: torch.Tensor, kind: str = "merge") -> torch.Tensor:
        """Sum of `t` over ranks (may reuse `t`'s storage)."""
        self._count(kind, t)
        return self._all_reduce(t) if self.world_size > 1 else t

    @torch.compiler.disable
    def broadcast(self, t: torch.Tensor, root: int = 0, kind: str = "other") -> torch.Tensor:
        """Rank `root`'s `t` on every rank (in place)."""
        self._count(kind, t)
        return self._broadcast(t, root) if self.world_size > 1 else t

    def all_errors(self, error: str | None) -> list[str | None]:
        """Every rank's `error` (None = fine), on every rank: start-up agreement, not counted."""
        return self._all_gather_object(error)

    def all_gather_object(self, obj, kind: str) -> list:
        """Every rank's picklable `obj`, on every rank, counted as one collective of `kind` (which
        must not be "merge" or "other": e.g. "digest" for the result check after a generation)."""
        self.calls[kind] += 1
        return self._all_gather_object(obj)

    def _all_gather_object(self, obj) -> list:
        return [obj]

    def abort(self, code: int = 1) -> None:
        """Take every rank down (a rank failed in a way the others cannot see)."""
        os._exit(code)

    def close(self) -> None:
        """Release what the communicator holds (collective; after the last collective)."""

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _broadcast(self, t: torch.Tensor, root: int) -> torch.Tensor:
        raise NotImplementedError


class MPIComm(Communicator):
    """mpi4py on CPU tensors, zero-copy through their numpy views (10-100x faster than gloo here)."""

    name = "mpi4py"

    def __init__(self, comm=None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm or MPI.COMM_WORLD
        super().__init__(self.comm.Get_rank(), self.comm.Get_size())

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reduce in float32
            return self._all_reduce(t.float()).to(torch.bfloat16)
        t = t.contiguous()
        self.comm.Allreduce(self.MPI.IN_PLACE, t.numpy(), op=self.MPI.SUM)
        return t

    def _broadcast(self, t: torch.Tensor, root: int) -> torch.Tensor:
        self.comm.Bcast(t.numpy(), root=root)
        return t

    def _all_gather_object(self, obj) -> list:
        return self.comm.allgather(obj)

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


class NCCLComm(Communicator):
    """torch.distributed NCCL on CUDA tensors; ranks and the rendezvous come from MPI."""

    name = "nccl"

    def __init__(self, mpi: MPIComm | None, device: torch.device):
        import torch.distributed as dist

        self.dist, self.mpi = dist, mpi
        rank, world = (mpi.rank, mpi.world_size) if mpi else (0, 1)
        super().__init__(rank, world)
        if world > 1:
            host = os.environ.get("MASTER_ADDR", "127.0.0.1")  # set it for multi-node runs
            port = mpi.comm.bcast(_free_port() if rank == 0 else 0, root=0)
            dist.init_process_group("nccl", init_method=f"tcp://{host}:{port}", rank=rank, world_size=world,
                                    device_id=device)

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        self.dist.all_reduce(t)
        return t

    def _broadcast(self, t: torch.Tensor, root: int) -> torch.Tensor:
        self.dist.broadcast(t, src=root)
        return t

    def _all_gather_object(self, obj) -> list:
        return self.mpi._all_gather_object(obj) if self.mpi else [obj]

    def abort(self, code: int = 1) -> None:
        if self.mpi:
            self.mpi.abort(code)
        os._exit(code)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_communicator(device: torch.device) -> Communicator:
    """MPI when launched by mpirun/mpiexec (or mpi4py is importable), NCCL on top of it for CUDA."""
    try:
        mpi = MPIComm()
    except (ImportError, RuntimeError):  # no mpi4py, or no MPI library behind it: one rank
        mpi = None
    if device.type == "cuda":
        return NCCLComm(mpi if mpi and mpi.world_size > 1 else None, device)
    return mpi if mpi is not None else Communicator(0, 1)
