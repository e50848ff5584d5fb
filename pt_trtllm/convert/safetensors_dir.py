"""Lazy read access to the safetensors files of a checkpoint directory (single file or sharded
with an index). Tensors are read one at a time, or only the rows/track a conversion needs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..formats import CheckpointError


class SafetensorsDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.path.glob("*.safetensors"))
            weight_map = None
        if not files:
            pickles = [p.name for p in self.path.glob("*.bin")] + [p.name for p in self.path.glob("*.pt")]
            hint = f" (found {pickles}: pickle files are never loaded; re-save them as safetensors)" if pickles else ""
            raise CheckpointError(f"{self.path}: no *.safetensors files{hint}")
        self._handles = {}
        self._where: dict[str, str] = {}
        for name in files:
            try:
                handle = safe_open(str(self.path / name), framework="pt")
            except Exception as e:  # noqa: BLE001 - any reader failure is a corrupt file
                raise CheckpointError(f"{self.path / name}: not a readable safetensors file ({e})") from e
            self._handles[name] = handle
            for key in handle.keys():
                if weight_map is None or weight_map.get(key) == name:
                    self._where[key] = name

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handles[self._where[key]].get_slice(key).get_shape())

    def dtype(self, key: str) -> str:
        return self._handles[self._where[key]].get_slice(key).get_dtype()

    def get(self, key: str, index=None) -> torch.Tensor:
        """The tensor, or only `index` of it (e.g. `slice(0, 64)` rows, or track `t`)."""
        handle = self._handles[self._where[key]]
        if index is None:
            return handle.get_tensor(key)
        return handle.get_slice(key)[index]
