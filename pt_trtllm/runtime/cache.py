"""The KV cache of the tracks one rank holds, preallocated for `max_batch` sequences ("slots") of
up to `max_len` positions. It implements the `update(k, v, index)` call of `modeling.Attention`:
a prefill writes positions 0..S-1 of some slots and attends only to itself; a decode step writes
one position per slot (each slot at its own position) and attends to the cache."""

from __future__ import annotations

import torch


class SlotKVCache:
    def __init__(self, num_layers: int, max_batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (num_layers, max_batch, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_batch, self.max_len = max_batch, max_len
        self._slots: torch.Tensor | None = None
        self._rows = torch.arange(max_batch, device=device)
        self._positions: torch.Tensor | None = None
        self._kv_len = 0

    def prefill(self, slots: torch.Tensor) -> None:
        """The next forward writes positions 0..S-1 of `slots` [b] (its batch rows, in order)."""
        self._slots, self._positions = slots, None

    def decode(self, positions: torch.Tensor, kv_len: int) -> None:
        """The next forward is one token for each of slots 0..n-1, slot i at `positions[i]` [n];
        attention reads the first `kv_len` positions (> max(positions); the caller masks each
        slot's future)."""
        self._positions, self._kv_len, self._slots = positions, kv_len, None

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy positions 0..length-1 of slot `src` into slot `dst` in every layer (a server keeps
        its running sequences in slots 0..n-1 by moving the last one into a finished one's slot)."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]

    def update(self, k: torch.Tensor, v: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._positions is None:
            # k, v: [b, g, S, d] -> written to slots, positions 0..S-1
            S = k.shape[2]
            self.k[index, self._slots, :, :S] = k
            self.v[index, self._slots, :, :S] = v
            return k, v
        # k, v: [n, g, 1, d] -> slot i, position positions[i]
        n = k.shape[0]
        rows = self._rows[:n]
        self.k[index, rows, :, self._positions] = k[:, :, 0]
        self.v[index, rows, :, self._positions] = v[:, :, 0]
        return self.k[index, :n, :, : self._kv_len], self.v[index, :n, :, : self._kv_len]
