"""The master's side of the metrics: which cell each worker writes, what is folded when it goes,
and a Snapshot of the whole server on demand.

The master tells the Gatherer four things: a worker is about to be forked for a slot (claim: a
free cell, zeroed), it was forked (started: its pid), it is gone (exited: its last counters
are added to its slot's retired row, with why it went), and after USR2 which workers it
adopted. A slot's series is then its retired row plus the cells of its running workers: every
worker that ever held the slot adds into it, so no counter goes backwards across a restart, a
HUP (the retiring and the new worker of a slot are both counted) or an upgrade (the area
survives exec). Everything else in a Snapshot the master measures itself: each listener's
accept queue (TCP_INFO, as `ss -lnt` shows it) and each worker's heartbeat age when asked, each
worker's memory (psutil, about half a millisecond a worker) a few workers at a time from its
loop (refresh_memory), so that a scrape of many workers reads no /proc file at all.
"""

from __future__ import annotations

import math
import socket
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

from ..logs import log
from ..net.listeners import Listener
from . import layout
from .layout import COUNTER_WORDS, EXIT_REASONS, Area

# A worker's memory reading is refreshed when it is this old; at most MEMORY_READS of them per
# round of the master's loop, the oldest first (the loop goes round at least once a second,
# and once per heartbeat: with many workers, many times a second).
MEMORY_MAX_AGE = 5.0
MEMORY_READS = 4
# req/s is measured over at least RATE_MIN and at most RATE_MAX seconds of samples.
RATE_MIN = 1.0
RATE_MAX = 10.0

# struct tcp_info (linux/tcp.h): 8 bytes of u8 fields, then u32 rto, ato, snd_mss, rcv_mss,
# unacked, sacked. On a listening socket the kernel reports the accept queue's length in
# tcpi_unacked and its limit (the backlog) in tcpi_sacked, which is what `ss -lnt` shows as
# Recv-Q and Send-Q.
_TCP_INFO = struct.Struct("=8x6I")


@dataclass
class WorkerFacts:
    """What the master's records say about one running worker."""

    slot: int
    pid: int
    state: str  # lifecycle.State's value: booting, ready, retiring, hung
    started: float  # monotonic time of its fork
    last_beat: float  # monotonic time of its last heartbeat


@dataclass
class WorkerFigures:
    """One running worker process in a Snapshot."""

    slot: int
    pid: int
    state: str
    age: float
    heartbeat_age: float
    requests: int  # served by this process
    in_flight: int
    connections: int
    websockets: int
    loop_lag: float
    memory_uss: int | None
    memory_rss: int | None


@dataclass
class SlotFigures:
    """One slot's series: its retired row plus its running workers."""

    slot: int
    counters: list[int]  # layout's counter words, summed
    in_flight: int = 0
    connections: int = 0
    websockets: int = 0
    loop_lag: float = 0.0  # the worst of its running workers
    heartbeat_age: float | None = None  # of its newest worker
    memory_uss: int = 0
    memory_rss: int = 0
    exits: int = 0
    last_exit: str = ""
    requests_per_second: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.counters[layout.REQUESTS:layout.REQUESTS + layout.N_REQUESTS])


@dataclass
class ListenerFigures:
    name: str
    queue: int
    limit: int


@dataclass
class Snapshot:
    """The whole server at one moment, for exposition.py and status.py."""

    pid: int
    uptime: float
    workers_wanted: int
    workers_ready: int
    slots: list[SlotFigures]
    workers: list[WorkerFigures]
    listeners: list[ListenerFigures]
    exits: dict[str, int]
    requests_per_second: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)  # version, build

    def total(self, word: int, count: int = 1) -> int:
        return sum(sum(slot.counters[word:word + count]) for slot in self.slots)


def listen_queue(sock: socket.socket) -> tuple[int, int] | None:
    """(connections waiting in the accept queue, the queue's limit) of a listening TCP socket,
    or None for another kind."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    except OSError:
        return None
    fields = _TCP_INFO.unpack_from(info)
    return fields[4], fields[5]


class MemoryReadings:
    """Each worker's USS and RSS, read with psutil and reused for MEMORY_MAX_AGE seconds."""

    def __init__(self) -> None:
        self.readings: dict[int, tuple[float, int | None, int | None]] = {}

    def refresh(self, pids: Sequence[int], now: float) -> None:
        for pid in set(self.readings) - set(pids):
            del self.readings[pid]
        stale = sorted((self.readings[pid][0] if pid in self.readings else -math.inf, pid)
                       for pid in pids)
        for taken, pid in stale[:MEMORY_READS]:
            if now - taken >= MEMORY_MAX_AGE:
                self.readings[pid] = (now, *read_memory(pid))

    def of(self, pid: int) -> tuple[int | None, int | None]:
        _, uss, rss = self.readings.get(pid, (0.0, None, None))
        return uss, rss


def read_memory(pid: int) -> tuple[int | None, int | None]:
    """(USS, RSS) in bytes; None where it cannot be read (gone, or not ours to read)."""
    try:
        process = psutil.Process(pid)
        try:
            full = process.memory_full_info()
            return int(full.uss), int(full.rss)
        except (psutil.AccessDenied, AttributeError):
            return None, int(process.memory_info().rss)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None, None


class Gatherer:
    """The master's bookkeeping of the area's cells, and the snapshots."""

    def __init__(self, area: Area):
        self.area = area
        self.cells: dict[int, int] = {}  # pid -> cell
        self.claimed: set[int] = set()  # cells in use (forked, or about to be)
        self.memory = MemoryReadings()
        self.samples: deque[tuple[float, dict[int, int]]] = deque()  # for req/s
        self.started = area.started or time.monotonic()
        self.warned_full = False
        # Every slot that has had a worker: its series stay after a TTOU removed the slot
        # (their sums would otherwise go backwards). An area taken over after USR2 says which.
        self.known_slots: set[int] = {slot for slot in range(1, layout.SLOTS + 1)
                                      if any(area.retired(slot))}

    # --- what the master tells ----------------------------------------------------------------

    def claim(self, slot: int) -> int | None:
        """A zeroed cell for a worker about to be forked for `slot`; None if there is none (the
        worker then serves uncounted: logged once)."""
        if 1 <= slot <= layout.SLOTS:
            for cell in range(layout.CELLS):
                if cell not in self.claimed:
                    self.claimed.add(cell)
                    self.known_slots.add(slot)
                    self.area.claim(cell, slot)
                    return cell
        if not self.warned_full:
            self.warned_full = True
            log.warning("metrics: no room for worker %d in the metrics area (%d slots, %d "
                        "running workers at most): it is not counted", slot, layout.SLOTS,
                        layout.CELLS)
        return None

    def started_worker(self, cell: int | None, pid: int) -> None:
        if cell is not None:
            self.area.set_pid(cell, pid)
            self.cells[pid] = cell

    def fork_failed(self, cell: int | None) -> None:
        if cell is not None:
            self.area.release(cell)
            self.claimed.discard(cell)

    def exited(self, pid: int, reason: str | None) -> None:
        """Worker `pid` was reaped: fold its counters into its slot's row and free its cell.
        `reason` (one of EXIT_REASONS) counts it as an exit; None for a stop's."""
        cell = self.cells.pop(pid, None)
        if cell is None:
            return
        _, slot = self.area.owner(cell)
        counters = self.area.read(cell)[:COUNTER_WORDS]
        self.area.fold(slot, counters, EXIT_REASONS.index(reason) if reason else None)
        self.area.release(cell)
        self.claimed.discard(cell)

    def adopt(self, pids: Sequence[int]) -> None:
        """After USR2: the cells of the workers this image adopted are theirs still; a cell
        whose worker is not among them (it died across the exec and was reaped by the old
        image... or never ran) is folded and freed."""
        running = set(pids)
        for cell in range(layout.CELLS):
            pid, slot = self.area.owner(cell)
            if not pid and not slot:
                continue
            if slot:
                self.known_slots.add(slot)
            if pid in running:
                self.cells[pid] = cell
                self.claimed.add(cell)
            else:
                if slot:
                    self.area.fold(slot, self.area.read(cell)[:COUNTER_WORDS], None)
                self.area.release(cell)

    def refresh_memory(self, pids: Sequence[int], now: float) -> None:
        """From the master's loop: the oldest memory readings, a few at a time."""
        self.memory.refresh(pids, now)

    # --- snapshots ------------------------------------------------------------------------------

    def snapshot(self, workers: Sequence[WorkerFacts], slots: Sequence[int],
                 listeners: Sequence[Listener], now: float, pid: int,
                 labels: dict[str, str] | None = None) -> Snapshot:
        """The whole server now (`now`: monotonic time; `slots`: the wanted worker numbers)."""
        by_slot: dict[int, SlotFigures] = {}

        def slot_figures(number: int) -> SlotFigures:
            figures = by_slot.get(number)
            if figures is None:
                row = self.area.retired(number) if 1 <= number <= layout.SLOTS \
                    else [0] * (layout.ROW_LAST_EXIT + 1)
                last = row[layout.ROW_LAST_EXIT]
                figures = by_slot[number] = SlotFigures(
                    number, row[:COUNTER_WORDS], exits=row[layout.ROW_EXITS],
                    last_exit=EXIT_REASONS[last - 1] if 0 < last <= len(EXIT_REASONS) else "")
            return figures

        for number in sorted({*slots, *self.known_slots}):
            slot_figures(number)
        rows = []
        for worker in sorted(workers, key=lambda w: (w.slot, w.started)):
            figures = slot_figures(worker.slot)
            cell = self.cells.get(worker.pid)
            data = self.area.read(cell) if cell is not None else [0] * layout.DATA_WORDS
            figures.counters = [a + b for a, b in zip(figures.counters, data, strict=False)]
            uss, rss = self.memory.of(worker.pid)
            lag = data[layout.LOOP_LAG_US] / 1e6
            row = WorkerFigures(
                worker.slot, worker.pid, worker.state, now - worker.started,
                now - worker.last_beat,
                sum(data[layout.REQUESTS:layout.REQUESTS + layout.N_REQUESTS]),
                data[layout.IN_FLIGHT], data[layout.OPEN_CONNECTIONS],
                data[layout.OPEN_WEBSOCKETS], lag, uss, rss)
            rows.append(row)
            figures.in_flight += row.in_flight
            figures.connections += row.connections
            figures.websockets += row.websockets
            figures.loop_lag = max(figures.loop_lag, lag)
            figures.heartbeat_age = row.heartbeat_age  # the newest worker's (sorted by start)
            figures.memory_uss += uss or 0
            figures.memory_rss += rss or 0
        queues = []
        for listener in listeners:
            queue = listen_queue(listener.socket)
            if queue is not None:
                name = listener.describe()
                if listener.slot:
                    name += f" worker {listener.slot}"
                queues.append(ListenerFigures(name, *queue))
        snapshot = Snapshot(
            pid, now - self.started, len(slots),
            sum(1 for worker in workers if worker.state == "ready"),
            [by_slot[number] for number in sorted(by_slot)], rows, queues,
            dict(zip(EXIT_REASONS, self.area.exits(), strict=True)), labels=labels or {})
        self._rates(snapshot, now)
        return snapshot

    def _rates(self, snapshot: Snapshot, now: float) -> None:
        """req/s per slot and in all, from the oldest sample within RATE_MAX seconds that is
        at least RATE_MIN old; this snapshot becomes a sample."""
        totals = {slot.slot: slot.requests for slot in snapshot.slots}
        samples = self.samples
        while samples and now - samples[0][0] > RATE_MAX:
            samples.popleft()
        base = next((sample for sample in samples if now - sample[0] >= RATE_MIN), None)
        if base is not None:
            taken, before = base
            elapsed = now - taken
            for slot in snapshot.slots:
                slot.requests_per_second = max(0, totals[slot.slot] - before.get(slot.slot, 0)) \
                    / elapsed
            snapshot.requests_per_second = sum(s.requests_per_second for s in snapshot.slots)
        if not samples or now - samples[-1][0] >= RATE_MIN / 2:
            samples.append((now, totals))
