"""How a section 4 tensor is made from a source checkpoint (the values of a name map)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Take:
    """Section 4 tensor = `key[index]` of the source (its last two dims swapped if `transpose`)."""

    key: str
    index: object = None
    transpose: bool = False


@dataclass(frozen=True)
class Ones:
    """Section 4 tensor = ones(n): a norm the source applies without a learned weight."""

    n: int
