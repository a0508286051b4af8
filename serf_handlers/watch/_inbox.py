"""The queue between the RPC reader thread and the watch loop, with its bound.

The reader must never wait for the handlers: while it does not read, the agent's 512-event
buffer for our stream fills, and the agent then drops events with only a WARN in its own
log (SERF_RPC.md, "Backpressure"). So `put_record` never blocks, and the queue is bounded
by what it keeps instead: past `bound` queued records (a storm faster than the handlers),
every queued member record is dropped and replaced by one `Collapsed` marker, at which the
loop reads the full member list and reconciles. Member records that arrive while that
marker waits are counted into it too: the reconcile reads the members after them, so they
would only repeat older news. What is not membership (user events, queries) cannot be
rebuilt from `members`: past the bound the oldest of those go, counted in the marker, which
the loop logs. Nothing is dropped without a log line.

Control items (a lost connection, a signal) go ahead of every record.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from ..config import DEFAULT_MAX_QUEUE
from ..events import MEMBER_EVENTS


@dataclass(slots=True)
class Record:
    """One stream record as the agent sent it (untrusted, not yet validated)."""

    generation: int  # the connection it came on: a query ID is valid only there
    number: int  # its place among every record received (see `Inbox.received`)
    body: object
    member: bool  # a member event (can be rebuilt from `members`)


@dataclass(slots=True)
class Collapsed:
    """Records the bound dropped: the loop reconciles (if `members`) and logs one line."""

    generation: int
    members: int = 0  # member records replaced by one reconcile
    others: int = 0  # user events and queries dropped


@dataclass(frozen=True, slots=True)
class Lost:
    """The connection of `generation` is gone (EOF, an error, a timeout)."""

    generation: int
    reason: str


@dataclass(frozen=True, slots=True)
class Signalled:
    signum: int


Item = Record | Collapsed | Lost | Signalled


@dataclass(slots=True)
class Inbox:
    """A thread-safe queue: the reader puts, the loop takes everything there is at once."""

    bound: int = DEFAULT_MAX_QUEUE
    received: int = 0  # records put so far; a `members` reply notes it (see _rpc.Client.members)
    _records: deque[Record | Collapsed] = field(default_factory=deque)
    _control: deque[Lost | Signalled] = field(default_factory=deque)
    _marker: Collapsed | None = None  # the queued marker, until taken
    _ready: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        if self.bound < 1:
            raise ValueError(f"bound: expected at least 1, got {self.bound}")

    def put_record(self, generation: int, body: object) -> None:
        """Queue one record; never blocks, whatever the loop is doing."""
        member = isinstance(body, dict) and body.get("Event") in MEMBER_EVENTS
        with self._ready:
            self.received += 1
            if member and self._marker is not None:
                self._marker.members += 1  # the reconcile to come reads the members after it
                return
            self._records.append(Record(generation, self.received, body, member))
            if len(self._records) > self.bound:
                self._collapse(generation)
            self._ready.notify()

    def put_control(self, item: Lost | Signalled) -> None:
        with self._ready:
            self._control.append(item)
            self._ready.notify()

    def take(self, timeout: float | None) -> list[Item]:
        """Everything queued, control items first; waits up to `timeout` s for something."""
        with self._ready:
            if not self._records and not self._control:
                self._ready.wait(timeout)
            items: list[Item] = [*self._control, *self._records]
            self._control.clear()
            self._records.clear()
            self._marker = None
            return items

    def __len__(self) -> int:
        with self._ready:
            return len(self._records) + len(self._control)

    def _collapse(self, generation: int) -> None:
        marker = self._marker or Collapsed(generation)
        kept: deque[Record | Collapsed] = deque()
        for item in self._records:
            if isinstance(item, Record) and item.member:
                marker.members += 1
            elif item is not marker:
                kept.append(item)
        while len(kept) >= self.bound:  # still too many user events and queries: the oldest go
            kept.popleft()
            marker.others += 1
        kept.append(marker)
        self._records = kept
        self._marker = marker
