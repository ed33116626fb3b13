"""Partition numbers for outbox rows: the same key always lands in the same partition."""

from __future__ import annotations

import zlib

__all__ = ["DEFAULT_PARTITIONS", "partition_of"]

#: Relays own partitions; more partitions allow more relays, at the cost of more locks to hold.
DEFAULT_PARTITIONS = 32


def partition_of(key: str, partitions: int = DEFAULT_PARTITIONS) -> int:
    """Stable partition number in ``range(partitions)`` for ``key`` (CRC-32, identical in every process)."""
    return zlib.crc32(key.encode()) % partitions
