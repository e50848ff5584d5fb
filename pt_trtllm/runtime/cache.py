"""The KV cache of the tracks one rank holds, preallocated for `max_batch` sequences ("slots") of
up to `max_len` positions. It implements the `update(k, v, index)` and `key_positions(index)`
calls of `modeling.Attention`: a prefill writes positions 0..len-1 of some slots and attends only
to itself; a decode step writes one position per slot (each slot at its own position) and attends
to the cache.

A local layer of window W (its queries see positions p - W .. p) keeps a ring of R = W + 1 entries
per slot when that is shorter than max_len: position p lives at entry p % R, and the ring records
the position each entry holds, so its memory is bounded by the window at any sequence length.
"""

from __future__ import annotations

import torch

EMPTY = -(2**30)
"""The position of a ring entry that holds nothing (outside every window)."""


class SlotKVCache:
    def __init__(self, num_layers: int, max_batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device, windows: list[int | None] | None = None):
        windows = windows or [None] * num_layers
        self.ring = [w + 1 if w is not None and w + 1 < max_len else None for w in windows]
        """R of each layer kept as a ring, None for a layer that keeps every position."""
        self.k, self.v, self.pos = [], [], []
        for r in self.ring:
            shape = (max_batch, kv_heads, r or max_len, head_dim)
            self.k.append(torch.zeros(shape, dtype=dtype, device=device))
            self.v.append(torch.zeros(shape, dtype=dtype, device=device))
            self.pos.append(torch.full((max_batch, r), EMPTY, device=device) if r else None)
        self.max_batch, self.max_len = max_batch, max_len
        self._slots: torch.Tensor | None = None
        self._lengths: torch.Tensor | None = None
        self._rows = torch.arange(max_batch, device=device)
        self._positions: torch.Tensor | None = None
        self._kv_len = 0

    def prefill(self, slots: torch.Tensor, lengths: torch.Tensor) -> None:
        """The next forward writes positions 0..lengths[i]-1 of `slots[i]` (its batch rows, in
        order, right-padded to the longest)."""
        self._slots, self._lengths, self._positions = slots, lengths, None

    def decode(self, positions: torch.Tensor, kv_len: int) -> None:
        """The next forward is one token for each of slots 0..n-1, slot i at `positions[i]` [n];
        attention reads the first `kv_len` positions (> max(positions); the caller masks each
        slot's future) of every layer that keeps them all, and the whole ring of the others."""
        self._positions, self._kv_len, self._slots = positions, kv_len, None

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy positions 0..length-1 of slot `src` into slot `dst` in every layer (a server keeps
        its running sequences in slots 0..n-1 by moving the last one into a finished one's slot)."""
        for k, v, pos in zip(self.k, self.v, self.pos):
            span = slice(None) if pos is not None else slice(0, length)
            k[dst, :, span] = k[src, :, span]
            v[dst, :, span] = v[src, :, span]
            if pos is not None:
                pos[dst] = pos[src]

    def rings(self) -> list[torch.Tensor]:
        """The tensors of every ring layer (keys, values, positions)."""
        return [t for i, r in enumerate(self.ring) if r for t in (self.k[i], self.v[i], self.pos[i])]

    def key_positions(self, index: int) -> torch.Tensor | None:
        """[n, kv_len] positions of the keys `update` returned in a decode step (EMPTY where a ring
        entry holds nothing); None in a prefill (the keys are the prompts' own tokens)."""
        if self._positions is None:
            return None
        n = self._positions.shape[0]
        if self.pos[index] is not None:
            return self.pos[index][:n]
        return torch.arange(self._kv_len, device=self._rows.device).expand(n, self._kv_len)

    def update(self, k: torch.Tensor, v: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._positions is None:
            self._write_prompts(k, v, index)
            return k, v
        # k, v: [n, g, 1, d] -> slot i, position positions[i] (its ring entry in a ring)
        n = k.shape[0]
        rows = self._rows[:n]
        at = self._positions if self.pos[index] is None else self._positions % self.ring[index]
        self.k[index][rows, :, at] = k[:, :, 0]
        self.v[index][rows, :, at] = v[:, :, 0]
        if self.pos[index] is not None:
            self.pos[index][rows, at] = self._positions
            return self.k[index][:n], self.v[index][:n]
        return self.k[index][:n, :, : self._kv_len], self.v[index][:n, :, : self._kv_len]

    def _write_prompts(self, k: torch.Tensor, v: torch.Tensor, index: int) -> None:
        # k, v: [b, g, S, d] -> positions 0..S-1 of the slots; a ring keeps each prompt's last R
        S = k.shape[2]
        if self.pos[index] is None:
            self.k[index][self._slots, :, :S] = k
            self.v[index][self._slots, :, :S] = v
            return
        R = self.ring[index]
        last = self._lengths[:, None] - 1  # [b, 1]
        entries = torch.arange(R, device=k.device)[None, :]  # [1, R]
        positions = last - (last - entries) % R  # [b, R]: the position entry r holds, the latest one
        held = positions >= 0
        src = positions.clamp(min=0)[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])  # [b, g, R, d]
        self.k[index][self._slots] = k.gather(2, src)
        self.v[index][self._slots] = v.gather(2, src)
        self.pos[index][self._slots] = torch.where(held, positions, EMPTY)
