"""`--comm pt_plugin`: the merges of the PyTorch runtime on CUDA through libpt_trtllm_plugins.so
(plugins/include/pt_merge.h), the same kernels as the engines' PTTrackMerge node.

PluginComm is a Communicator whose merges are not all-reduces of the model's tensors but whole
merges: `make_merge` gives a PluginMerge, which calls pt_merge_run once per merge (the combine op,
the all-reduce and the next RMSNorm in the library's kernels). Everything else a generation step
exchanges (the sampled tokens, start-up errors, digests) goes through mpi4py on CPU copies, so the
ranks may share one GPU (NCCL refuses that; the one-shot transport does not).

The library's rendezvous data (the NCCL unique id, the peer-buffer IPC handles) travels over mpi4py;
a merge context is created, collectively, at the first merge of each dtype and hidden size (every
rank's first forward is the same prefill), before any CUDA graph is captured. Merges of more rows than
MAX_ROWS run as several calls (rows are independent), which bounds the library's buffers.
"""

from __future__ import annotations

import ctypes

import torch

from ..merge import Merge, Norm
from ..plugin_lib import load
from .comm import Communicator, MPIComm

TRANSPORTS = {"auto": 0, "nccl": 1, "oneshot": 2}
"""pt_merge_transport by name (plugins/include/pt_merge.h)."""
COMBINE_OPS = {"mean": 0, "sum": 1, "residual_sum": 2}
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
MAX_ROWS = 4096
UNIQUE_ID_BYTES, IPC_HANDLE_BYTES = 128, 64


class _Config(ctypes.Structure):
    _fields_ = [("rank", ctypes.c_int), ("num_ranks", ctypes.c_int), ("device", ctypes.c_int),
                ("unique_id", ctypes.c_char_p), ("dtype", ctypes.c_int), ("combine_op", ctypes.c_int),
                ("flags", ctypes.c_uint), ("hidden", ctypes.c_int), ("max_tokens", ctypes.c_int),
                ("transport", ctypes.c_int), ("oneshot_max_bytes", ctypes.c_size_t)]


class _Norms(ctypes.Structure):
    _fields_ = [("combine_weight", ctypes.c_void_p), ("combine_eps", ctypes.c_float),
                ("dispatch_weight", ctypes.c_void_p), ("dispatch_eps", ctypes.c_float),
                ("next_weight", ctypes.c_void_p), ("next_eps", ctypes.c_float)]


class _Outputs(ctypes.Structure):
    _fields_ = [("merged", ctypes.c_void_p), ("dispatch_normed", ctypes.c_void_p), ("next_normed", ctypes.c_void_p)]


def _library() -> ctypes.CDLL:
    lib = load()
    lib.pt_merge_last_error.restype = ctypes.c_char_p
    lib.pt_merge_create.argtypes = [ctypes.POINTER(_Config), ctypes.POINTER(ctypes.c_void_p)]
    lib.pt_merge_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                 ctypes.POINTER(_Norms), ctypes.POINTER(_Outputs), ctypes.c_void_p]
    for name in ("pt_merge_get_unique_id",):
        getattr(lib, name).argtypes = [ctypes.c_char_p]
    for name in ("pt_merge_ipc_handle", "pt_merge_connect"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.pt_merge_transport_for.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    for name in ("pt_merge_disconnect", "pt_merge_destroy"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    return lib


class PluginComm(Communicator):
    """The plugin library for merges, mpi4py for the rest (see the module docstring)."""

    name = "pt_plugin"

    def __init__(self, mpi: MPIComm | None, device: torch.device, transport: str = "auto"):
        if device.type != "cuda":
            raise ValueError("--comm pt_plugin runs on CUDA devices only")
        if transport not in TRANSPORTS:
            raise ValueError(f"--plugin_transport {transport!r} is not one of {tuple(TRANSPORTS)}")
        self.mpi, self.device, self.transport = mpi, device, transport
        super().__init__(*((mpi.rank, mpi.world_size) if mpi else (0, 1)))
        self.lib = _library()
        self._contexts: dict[tuple, ctypes.c_void_p] = {}

    def _check(self, status: int) -> None:
        if status != 0:
            raise RuntimeError(self.lib.pt_merge_last_error().decode())

    def _error(self, status: int) -> str | None:
        return None if status == 0 else self.lib.pt_merge_last_error().decode()

    def _agree(self, error: str | None, ctx: ctypes.c_void_p) -> None:
        """Every rank's error of a collective step; if any rank failed, every rank tears `ctx` down
        and raises the first one (no rank goes on to spin in a merge its peers never join)."""
        failed = [(r, e) for r, e in enumerate(self._all_gather_object(error)) if e is not None]
        if failed:
            if ctx:
                self._teardown([ctx])
            rank, message = failed[0]
            raise RuntimeError(f"rank {rank}: {message}" if self.world_size > 1 else message)

    def context(self, combine_op: str, dtype: torch.dtype, hidden: int) -> ctypes.c_void_p:
        """This rank's merge context for (combine_op, dtype, hidden), created collectively on first use."""
        key = (combine_op, dtype, hidden)
        if key in self._contexts:
            return self._contexts[key]
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("--comm pt_plugin: the first merge of a new dtype or hidden size is under CUDA graph "
                               "capture (creating its context would break the capture): run one eagerly first")
        unique_id = ctypes.create_string_buffer(UNIQUE_ID_BYTES)
        if self.transport != "oneshot":
            error = self._error(self.lib.pt_merge_get_unique_id(unique_id)) if self.rank == 0 else None
            self._agree(error, None)
            unique_id = ctypes.create_string_buffer(self._bcast_bytes(unique_id.raw), UNIQUE_ID_BYTES)
        config = _Config(self.rank, self.world_size, self.device.index or 0, ctypes.cast(unique_id, ctypes.c_char_p),
                         DTYPES[dtype], COMBINE_OPS[combine_op], 0, hidden, MAX_ROWS, TRANSPORTS[self.transport], 0)
        ctx = ctypes.c_void_p()
        self._agree(self._error(self.lib.pt_merge_create(ctypes.byref(config), ctypes.byref(ctx))), ctx)
        if self.transport != "nccl":
            handle = ctypes.create_string_buffer(IPC_HANDLE_BYTES)
            self._agree(self._error(self.lib.pt_merge_ipc_handle(ctx, handle)), ctx)
            handles = b"".join(self._all_gather_object(handle.raw))
            self._agree(self._error(self.lib.pt_merge_connect(ctx, handles)), ctx)
        self._contexts[key] = ctx
        return ctx

    def transport_for(self, ctx: ctypes.c_void_p, rows: int) -> str:
        """"oneshot" or "nccl": what the library uses for a merge of `rows` rows."""
        out = ctypes.c_int()
        self._check(self.lib.pt_merge_transport_for(ctx, rows, ctypes.byref(out)))
        return {v: k for k, v in TRANSPORTS.items()}[out.value]

    def make_merge(self, combine_op: str, num_tracks: int) -> Merge:
        return PluginMerge(combine_op, num_tracks, self)

    def _teardown(self, contexts: list[ctypes.c_void_p]) -> None:
        """Collective: every rank closes the peer buffers it opened before any rank frees its own
        (pt_merge.h: pt_merge_disconnect, a barrier, pt_merge_destroy)."""
        torch.cuda.synchronize(self.device)
        errors = [self._error(self.lib.pt_merge_disconnect(ctx)) for ctx in contexts]
        self._all_gather_object(None)  # the barrier
        errors += [self._error(self.lib.pt_merge_destroy(ctx)) for ctx in contexts]
        if any(errors):
            raise RuntimeError(next(e for e in errors if e))

    def close(self) -> None:
        """Free the merge contexts (collective: every rank calls it, after its last merge)."""
        contexts, self._contexts = list(self._contexts.values()), {}
        if contexts:
            self._teardown(contexts)

    # the rest of a generation step: mpi4py on CPU copies
    def _bcast_bytes(self, data: bytes) -> bytes:
        return self.mpi.comm.bcast(data, root=0) if self.mpi else data

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t.copy_(self.mpi._all_reduce(t.cpu()))

    def _broadcast(self, t: torch.Tensor, root: int) -> torch.Tensor:
        return t.copy_(self.mpi._broadcast(t.cpu(), root))

    def _all_gather_object(self, obj) -> list:
        return self.mpi._all_gather_object(obj) if self.mpi else [obj]

    def abort(self, code: int = 1) -> None:
        if self.mpi:
            self.mpi.abort(code)
        super().abort(code)


class PluginMerge(Merge):
    """One pt_merge_run per merge (per MAX_ROWS rows): the combine op over the ranks and, when the
    caller passes the next norm, its output from the same kernel (pt_trtllm/merge.py's interface)."""

    def __init__(self, combine_op: str, num_tracks: int, comm: PluginComm):
        super().__init__(combine_op, num_tracks)
        self.comm = comm

    @torch.compiler.disable
    def forward(self, x: torch.Tensor, hs: list[torch.Tensor],
                norm: Norm | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        (h,) = hs
        shape, hidden = h.shape, h.shape[-1]
        h2, x2 = h.reshape(-1, hidden).contiguous(), x.reshape(-1, hidden).contiguous()  # [rows, H]
        merged = torch.empty_like(h2)
        normed = torch.empty_like(h2) if norm is not None else None
        weight = norm.weight.to(h.dtype).contiguous() if norm is not None else None
        ctx = self.comm.context(self.combine_op, h.dtype, hidden)
        self.comm._count("merge", h2)
        norms = _Norms(0, 0.0, 0, 0.0, weight.data_ptr() if weight is not None else 0, norm.eps if norm is not None else 0.0)
        stream = torch.cuda.current_stream(h.device).cuda_stream
        for start in range(0, h2.shape[0], MAX_ROWS):
            rows = min(MAX_ROWS, h2.shape[0] - start)
            outputs = _Outputs(merged[start].data_ptr(), 0, normed[start].data_ptr() if normed is not None else 0)
            self.comm._check(self.comm.lib.pt_merge_run(ctx, h2[start].data_ptr(), x2[start].data_ptr(), rows,
                                                        ctypes.byref(norms), ctypes.byref(outputs), stream))
        return merged.view(shape), (normed.view(shape) if normed is not None else None)
