"""The shared-memory area: its layout, and how each part of it is written and read.

The master creates the area (a memfd, mapped shared) before it forks any worker, so every
worker inherits the mapping; USR2's new image maps the same memfd again (its descriptor is
passed across exec like the listeners), so nothing the area holds is lost in an upgrade.
Everything is 64-bit words:

  header        MAGIC, VERSION, then exits by reason (the master's)
  cells         CELLS of CELL_WORDS: one per running worker. Word 0 is the generation, odd
                while the worker writes; words 1-2 (the pid and slot) are the master's, written
                before the worker runs and cleared when it is reaped; then the worker's data:
                its counters (counters.py, in that order) and its gauges
  retired rows  SLOTS of ROW_WORDS, the master's: per slot, the counters of every worker that
                held the slot and is gone, its exits, and the reason of the last one

One writer per word: a cell's data is its worker's, everything else the master's. A worker
publishes once a second (generation odd, data, generation even); a reader copies the data
between two reads of the generation and retries when they differ or are odd, so it never
takes a half-written cell for a whole one. A worker killed while writing leaves its generation
odd: the reader then takes what is there after a few tries (each word is written whole, so a
counter is at worst a second behind).
"""

from __future__ import annotations

import array
import mmap
import os
import time
from collections.abc import Sequence
from typing import Final

from .counters import BUCKETS, METHODS, REFUSALS, STATUS_CLASSES, RequestCounts

MAGIC: Final = 0x6475636B6D657472  # b"duckmetr": an area this code wrote
VERSION: Final = 1
HEADER_WORDS: Final = 64
CELL_WORDS: Final = 128
ROW_WORDS: Final = 128
CELLS: Final = 512  # running workers at once, retiring ones included (HUP doubles them)
SLOTS: Final = 256  # worker numbers 1..SLOTS have metrics; beyond, a worker serves uncounted

# Why a worker went (the master's record of it), the order of the header's exit counters.
EXIT_REASONS: Final = ("exit_code", "signal", "oom", "hung", "max_requests", "memory_limit",
                       "reload", "upgrade", "scale_down", "boot_timeout")
_EXITS_AT: Final = 2
_STARTED_AT: Final = HEADER_WORDS - 1  # when the first image created it (monotonic, us)

# --- a cell's data: the counters, then the gauges ------------------------------------------
REQUESTS: Final = 0
N_REQUESTS: Final = len(METHODS) * len(STATUS_CLASSES)
DURATIONS: Final = REQUESTS + N_REQUESTS
DURATION_SUM_US: Final = DURATIONS + len(BUCKETS) + 1
BODY_IN: Final = DURATION_SUM_US + 1
BODY_OUT: Final = BODY_IN + 1
REFUSED: Final = BODY_OUT + 1
CONNECTIONS: Final = REFUSED + len(REFUSALS)
COUNTER_WORDS: Final = CONNECTIONS + 1  # what is folded into the retired row on exit
IN_FLIGHT: Final = COUNTER_WORDS
OPEN_CONNECTIONS: Final = IN_FLIGHT + 1
OPEN_WEBSOCKETS: Final = OPEN_CONNECTIONS + 1
LOOP_LAG_US: Final = OPEN_WEBSOCKETS + 1
PUBLISHED_US: Final = LOOP_LAG_US + 1  # CLOCK_MONOTONIC, the same clock in every process
DATA_WORDS: Final = PUBLISHED_US + 1
_CELL_PID: Final = 1
_CELL_SLOT: Final = 2
_CELL_DATA: Final = 4
# A retired row: the counters, then the exits and the last exit's reason (index + 1; 0 none).
ROW_EXITS: Final = COUNTER_WORDS
ROW_LAST_EXIT: Final = COUNTER_WORDS + 1
_MAX_WORD: Final = 2**64 - 1

assert _CELL_DATA + DATA_WORDS <= CELL_WORDS and ROW_LAST_EXIT < ROW_WORDS
assert _EXITS_AT + len(EXIT_REASONS) <= HEADER_WORDS

SIZE: Final = (HEADER_WORDS + CELLS * CELL_WORDS + SLOTS * ROW_WORDS) * 8
# Tries at a consistent copy of a cell before taking it as it is (its writer died mid-write).
READ_TRIES: Final = 100


def counter_words(counts: RequestCounts, out: array.array) -> None:
    """Write `counts` into the first COUNTER_WORDS of `out` (an array('Q'))."""
    counts.settle()
    out[REQUESTS:REQUESTS + N_REQUESTS] = array.array("Q", counts.requests)
    out[DURATIONS:DURATIONS + len(BUCKETS) + 1] = array.array("Q", counts.durations)
    out[DURATION_SUM_US] = min(int(counts.duration_sum * 1e6), _MAX_WORD)
    out[BODY_IN] = counts.body_in
    out[BODY_OUT] = counts.body_out
    out[REFUSED:REFUSED + len(REFUSALS)] = array.array("Q", counts.refused)
    out[CONNECTIONS] = counts.connections


class Area:
    """The mapped area, as 64-bit words. `fd` is the memfd (-1 for an area in plain memory,
    as the unit tests make)."""

    def __init__(self, buffer: mmap.mmap | bytearray, fd: int = -1):
        self.buffer = buffer
        self.fd = fd
        self.words = memoryview(buffer).cast("Q")

    @classmethod
    def create(cls) -> Area:
        """A new area, shared with the children forked after this (and passed across exec)."""
        fd = os.memfd_create("duck-prefork-metrics", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, SIZE)  # pages are only allocated as they are written
            area = cls(mmap.mmap(fd, SIZE, mmap.MAP_SHARED), fd)
        except BaseException:
            os.close(fd)
            raise
        area.words[0] = MAGIC
        area.words[1] = VERSION
        area.words[_STARTED_AT] = int(time.monotonic() * 1e6)
        return area

    @classmethod
    def adopt(cls, fd: int) -> Area:
        """After USR2: the previous image's area. Raises ValueError if it is not one."""
        os.set_inheritable(fd, False)
        if os.fstat(fd).st_size != SIZE:
            raise ValueError("the inherited metrics area has another size")
        area = cls(mmap.mmap(fd, SIZE, mmap.MAP_SHARED), fd)
        if area.words[0] != MAGIC or area.words[1] != VERSION:
            raise ValueError("the inherited metrics area has another layout")
        return area

    @property
    def started(self) -> float:
        """When the master started (an upgrade keeps it): monotonic seconds."""
        return self.words[_STARTED_AT] / 1e6

    def close_fd(self) -> None:
        """In a worker: the mapping stays, the descriptor goes (only the master passes it on)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # --- cells -------------------------------------------------------------------------------

    @staticmethod
    def _cell(cell: int) -> int:
        return HEADER_WORDS + cell * CELL_WORDS

    def claim(self, cell: int, slot: int) -> None:
        """The master, before forking the cell's worker: zeroed, owned by `slot`."""
        base = self._cell(cell)
        self.words[base:base + CELL_WORDS] = array.array("Q", bytes(CELL_WORDS * 8))
        self.words[base + _CELL_SLOT] = slot

    def set_pid(self, cell: int, pid: int) -> None:
        self.words[self._cell(cell) + _CELL_PID] = pid

    def owner(self, cell: int) -> tuple[int, int]:
        """(pid, slot) of the cell; pid 0 for a free cell."""
        base = self._cell(cell)
        return self.words[base + _CELL_PID], self.words[base + _CELL_SLOT]

    def release(self, cell: int) -> None:
        base = self._cell(cell)
        self.words[base + _CELL_PID] = 0
        self.words[base + _CELL_SLOT] = 0

    def publish(self, cell: int, data: array.array) -> None:
        """The worker: write its data (DATA_WORDS, array('Q')) under the generation counter."""
        base = self._cell(cell)
        words = self.words
        generation = words[base]
        words[base] = generation + 1  # odd: being written
        words[base + _CELL_DATA:base + _CELL_DATA + DATA_WORDS] = data
        words[base] = generation + 2

    def read(self, cell: int) -> list[int]:
        """A consistent copy of the cell's data (see the module docstring)."""
        base = self._cell(cell)
        words = self.words
        start, end = base + _CELL_DATA, base + _CELL_DATA + DATA_WORDS
        data = words[start:end].tolist()
        for _ in range(READ_TRIES):
            before = words[base]
            if before & 1:
                continue
            data = words[start:end].tolist()
            if words[base] == before:
                break
        return data

    # --- retired rows and exits (the master's) ------------------------------------------------

    @staticmethod
    def _row(slot: int) -> int:
        return HEADER_WORDS + CELLS * CELL_WORDS + (slot - 1) * ROW_WORDS

    def retired(self, slot: int) -> list[int]:
        """The slot's retired row: COUNTER_WORDS counters, then exits and the last reason."""
        base = self._row(slot)
        return self.words[base:base + ROW_LAST_EXIT + 1].tolist()

    def fold(self, slot: int, counters: Sequence[int], reason: int | None) -> None:
        """Add a gone worker's counters to its slot's row; count its exit if `reason` (an index
        of EXIT_REASONS) is given."""
        base = self._row(slot)
        words = self.words
        for index, value in enumerate(counters[:COUNTER_WORDS]):
            words[base + index] = (words[base + index] + value) & _MAX_WORD
        if reason is not None:
            words[base + ROW_EXITS] += 1
            words[base + ROW_LAST_EXIT] = reason + 1
            words[_EXITS_AT + reason] += 1

    def exits(self) -> list[int]:
        """Exits by reason (EXIT_REASONS' order), since the area was created."""
        return self.words[_EXITS_AT:_EXITS_AT + len(EXIT_REASONS)].tolist()


class CellWriter:
    """A worker's end of its cell: publish() once a second, from the worker's tick."""

    def __init__(self, area: Area, cell: int):
        self.area = area
        self.cell = cell
        self.data = array.array("Q", bytes(DATA_WORDS * 8))  # reused by every publish

    def publish(self, counts: RequestCounts, in_flight: int, connections: int,
                websockets: int, loop_lag: float) -> None:
        data = self.data
        counter_words(counts, data)
        data[IN_FLIGHT] = in_flight
        data[OPEN_CONNECTIONS] = connections
        data[OPEN_WEBSOCKETS] = websockets
        data[LOOP_LAG_US] = max(0, int(loop_lag * 1e6))
        data[PUBLISHED_US] = int(time.monotonic() * 1e6)
        self.area.publish(self.cell, data)

