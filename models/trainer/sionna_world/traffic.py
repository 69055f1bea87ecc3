"""Downlink traffic of the world: full buffers, or FTP-like packets arriving as a Poisson process.

* ``full``: every UT always has data (the service is told so: no ``buffer_bits``); a new block
  carries its whole TBS. Packet latency is undefined (NaN).
* ``ftp``: TR 36.814 / TR 38.802 FTP model 3 in spirit — packets of ``packet_bits`` arrive at each
  UT as a Poisson process of rate ``load_bps / packet_bits`` per second, independent between UTs,
  drawn once per run from ``numpy.random.default_rng([seed, 2])``: the arrivals do not depend on
  the policy, so every policy of a comparison sees the same packets. A packet arriving in slot
  ``a`` can be scheduled from slot ``a``; its latency is ``d − a + 1`` slots when its last bit is
  acknowledged in slot ``d`` (the slots it waited and the slot that completed it).

``Queues`` is the per-UT FIFO of bits not yet sent: a new block takes bits from the head (the
segments of the packets it carries), an acknowledged block completes its packets' bits, and a
block that exhausts its HARQ retransmissions gives its segments back to the head of the queue
(RLC acknowledged mode sends them again as new data).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

TRAFFIC_KINDS = ("full", "ftp")


@dataclass(frozen=True)
class TrafficSpec:
    """What arrives at the UTs (module doc).

    Attributes:
        kind: ``"full"`` or ``"ftp"``.
        packet_bits: FTP packet size (bits).
        load_bps: offered load per UT (bit/s) of the FTP model.
    """

    kind: str = "full"
    packet_bits: int = 40_000
    load_bps: float = 4e6

    def __post_init__(self) -> None:
        if self.kind not in TRAFFIC_KINDS:
            raise ValueError(f"traffic must be one of {list(TRAFFIC_KINDS)}, got {self.kind!r}")
        if self.packet_bits < 1 or self.load_bps <= 0:
            raise ValueError("packet_bits must be >= 1 and load_bps > 0")

    @property
    def full_buffer(self) -> bool:
        return self.kind == "full"

    def arrivals(self, num_ut: int, slots: int, slot_s: float, seed: int) -> np.ndarray:
        """int64 [slots, U]: packets arriving per UT per slot (all zero for full buffers)."""
        if self.full_buffer:
            return np.zeros((slots, num_ut), np.int64)
        lam = self.load_bps / self.packet_bits * slot_s
        return np.random.default_rng([seed, 2]).poisson(lam, size=(slots, num_ut)).astype(np.int64)

    def describe(self) -> str:
        if self.full_buffer:
            return "full buffers"
        return f"FTP-like Poisson packets of {self.packet_bits} bits, {self.load_bps / 1e6:g} Mbit/s per UT"


#: a block's payload: (packet index, bits) per packet it carries
Segments = list[tuple[int, int]]


class Queues:
    """Per-UT FIFO of unsent bits and the packets they belong to (module doc)."""

    def __init__(self, num_ut: int, packet_bits: int) -> None:
        self.packet_bits = int(packet_bits)
        self._fifo: list[deque[list[int]]] = [deque() for _ in range(num_ut)]  # [packet, unsent bits]
        self.unsent = np.zeros(num_ut, np.int64)
        self.arrival_slot: list[int] = []
        self.owner: list[int] = []
        self.undelivered: list[int] = []
        self.done_slot: list[int] = []

    def arrive(self, slot: int, counts: np.ndarray) -> None:
        """Add ``counts[u]`` packets to each UT at ``slot``."""
        for u in np.flatnonzero(counts).tolist():
            for _ in range(int(counts[u])):
                pid = len(self.arrival_slot)
                self.arrival_slot.append(slot)
                self.owner.append(u)
                self.undelivered.append(self.packet_bits)
                self.done_slot.append(-1)
                self._fifo[u].append([pid, self.packet_bits])
                self.unsent[u] += self.packet_bits

    def take(self, u: int, bits: int) -> Segments:
        """Up to ``bits`` bits from the head of UT ``u``'s queue, as packet segments."""
        out: Segments = []
        left = int(bits)
        fifo = self._fifo[u]
        while left > 0 and fifo:
            head = fifo[0]
            n = min(left, head[1])
            out.append((head[0], n))
            head[1] -= n
            left -= n
            if head[1] == 0:
                fifo.popleft()
        self.unsent[u] -= int(bits) - left
        return out

    def give_back(self, u: int, segments: Segments) -> None:
        """Return a failed block's segments to the head of UT ``u``'s queue, in order."""
        fifo = self._fifo[u]
        for pid, n in reversed(segments):
            if fifo and fifo[0][0] == pid:
                fifo[0][1] += n
            else:
                fifo.appendleft([pid, n])
            self.unsent[u] += n

    def deliver(self, segments: Segments, slot: int) -> None:
        """Acknowledged segments: packets whose last bit they carry complete at ``slot``."""
        for pid, n in segments:
            self.undelivered[pid] -= n
            assert self.undelivered[pid] >= 0, "a packet's bits were delivered twice"
            if self.undelivered[pid] == 0:
                self.done_slot[pid] = slot

    def latencies_slots(self, from_slot: int = 0) -> np.ndarray:
        """int64 [P]: latency (slots, ``done − arrival + 1``) of the packets that arrived at or after
        ``from_slot`` and completed."""
        arr = np.asarray(self.arrival_slot, np.int64)
        done = np.asarray(self.done_slot, np.int64)
        ok = (arr >= from_slot) & (done >= 0)
        return done[ok] - arr[ok] + 1

    def pending_packets(self, from_slot: int = 0) -> int:
        """Packets that arrived at or after ``from_slot`` and are not complete."""
        arr = np.asarray(self.arrival_slot, np.int64)
        done = np.asarray(self.done_slot, np.int64)
        return int(((arr >= from_slot) & (done < 0)).sum())
