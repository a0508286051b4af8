"""The watch loop: the configured handlers in one process, fed by the agent's RPC stream.

One thread runs every handler, in the order the agent sent the events; the RPC reader
thread only decodes and queues (_rpc.py, _inbox.py), and a third one turns signals into
queue items (`signals`). What the loop does, and why it is never silently wrong:

- **Connect** (and every reconnect): handshake, auth, `stream` with exactly the types the
  handlers registered, `stats` for this node, then `members` and a full reconcile: an
  event sent while nobody listened is never replayed (SERF_RPC.md, "No replay").
- **Member records** are merged in a window (`wait`, _coalesce.py) and run as at most one
  event per type; a record that arrived before the last `members` reply is older news than
  that list, and is dropped.
- **Queries** run first of what one take from the queue holds, ahead of the member window
  and the user events queued with them: Serf drops an answer sent after the query's
  timeout (3.2 s on a small LAN), and the answer says what the load balancer does now,
  which the queued work has not changed yet. A query's reply goes back with `respond` when
  every handler succeeded and the reply is not empty, as Serf does for a script. A run
  already under way is never interrupted: a query can still wait for that one.
- **User events** run at once, in order, after the queries and the member window.
- **A periodic reconcile** every `reconcile_interval`, sooner (5 s, doubling) after a
  handler failed: the handlers' state is rebuilt from `members` whatever was missed.
- **A queue past its bound** collapses into one reconcile (_inbox.py), logged.
- **The agent gone** (EOF, a timeout): reconnect with backoff (0.1 s doubling to 2 s), keep
  every handler's state, reconcile; one line when it goes, one when it is back.
- **SIGHUP** re-reads the config: a bad one keeps the running one (one line naming the
  error); a good one reconciles, and subscribes again when the event types changed.
- **SIGTERM/SIGINT**: the run under way finishes (it is never interrupted), then exit 0.

Handlers take their own locks (the haproxy handler's `<state>.lock`) for each run, as in
a per-event run, so `serf-handle reconcile`, `status` and per-event runs work alongside.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .. import _log, _metrics
from ..config import DEFAULT_MAX_QUEUE, Config
from ..dispatch import EXIT_OK, Dispatcher, Outcome
from ..errors import ConfigError, EventError, SerfHandlersError, SerfRPCError
from ..events import MemberEvent, Node, UserEvent
from ..members import Membership
from . import _coalesce
from ._coalesce import Change, Known, Wait, Window
from ._inbox import Collapsed, Inbox, Item, Lost, Record, Signalled
from ._records import MemberRecord, QueryRecord, convert, local_node, snapshot, stream_filter
from ._rpc import Refused

BACKOFF = (0.1, 2.0)  # s: the first wait before reconnecting, and the longest
RETRY = 5.0  # s: the first reconcile after a failed run (doubling up to reconcile_interval)
METRICS_EVERY = 1.0  # s: the metrics file is rewritten at most this often


class Session(Protocol):
    """What the loop needs of a connection (`_rpc.Client`; the tests hand in fakes)."""

    generation: int

    def stream(self, types: str) -> None: ...
    def stats(self) -> object: ...
    def members(self) -> tuple[object, int]: ...
    def respond(self, query_id: int, payload: bytes) -> None: ...
    def close(self) -> None: ...


# Opens a session (connected, handshaken, authenticated) or raises SerfRPCError.
Open = Callable[[Inbox, int, threading.Event], Session]


class Watcher:
    """The loop and its state: the session (one connection), the handlers' membership as last
    told (`model`), the changes not applied yet (`window`), the next reconcile. `run` is the
    loop; `signal` is all another thread may call. `open` and `load` are injected: the real
    ones connect to an agent and read the config file (`serve`); the tests pass fakes."""

    def __init__(
        self,
        config: Config,
        dispatcher: Dispatcher,
        open: Open,
        load: Callable[[], tuple[Config, Dispatcher]],
        where: str,
        max_queue: int = DEFAULT_MAX_QUEUE,
        clock: Callable[[], float] = time.monotonic,
        backoff: tuple[float, float] = BACKOFF,
    ) -> None:
        self.inbox = Inbox(max_queue)
        self.stop = threading.Event()
        self._open, self._load, self._where, self._clock, self._backoff = open, load, where, clock, backoff
        self._apply_config(config, dispatcher)
        self.session: Session | None = None
        self._generations = 0
        self.node = Node("")
        self.model: dict[str, Known] = {}  # what the handlers were last told, by node name
        self.window: Window | None = None  # member changes not applied yet
        self._fresh_from = 0  # member records numbered up to this are older than the last `members`
        self._next_reconcile = 0.0
        self._retry = 0.0  # the current retry delay after a failure; 0 when the last run succeeded
        self._metrics_due: float | None = None

    def _apply_config(self, config: Config, dispatcher: Dispatcher) -> None:
        self.config, self.dispatcher = config, dispatcher
        self.wait = Wait(config.wait_min, config.wait_max)
        self.filter = stream_filter(s for r in dispatcher.registrations for s in r.events)
        self._handlers = [r.name for r in dispatcher.registrations]

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Until SIGTERM (`stop`): 0. Raises ConfigError if the agent refuses us at the start."""
        if self._connect(None):
            while not self.stop.is_set():
                self._handle(self.inbox.take(self._timeout()))
                if not self.stop.is_set():
                    self._tick()
        if self.session is not None:
            self.session.close()
        self._flush_metrics()
        _log.info("watch: stopped")
        return EXIT_OK

    def signal(self, signum: int) -> None:
        """From the signal thread (or a test): SIGTERM/SIGINT stop after the run under way."""
        if signum != signal.SIGHUP:
            self.stop.set()
        self.inbox.put_control(Signalled(signum))

    def _handle(self, items: list[Item]) -> None:
        queries: list[tuple[int, QueryRecord]] = []
        later: list[tuple[int, UserEvent]] = []
        collapsed = False
        for item in items:
            if self.stop.is_set():
                return
            if isinstance(item, Signalled):
                if item.signum == signal.SIGHUP:
                    self._reload()
            elif isinstance(item, Lost):
                if self.session is not None and item.generation == self.session.generation:
                    self._reconnect(item.reason)
            elif self.session is None or item.generation != self.session.generation:
                continue  # from a connection given up: its query IDs mean nothing now
            elif isinstance(item, Collapsed):
                collapsed = self._collapsed(item) or collapsed
            else:
                self._record(item, queries, later)
        self._run_all(queries)  # first: Serf's timeout runs (module docstring, "Queries")
        if collapsed and not self.stop.is_set():
            self._reconcile("the queue overflowed")
        if self.window is not None and _coalesce.due(self.window, self.wait) <= self._clock():
            self._apply_window()
        self._run_all(later)

    def _run_all(self, events: list[tuple[int, UserEvent]] | list[tuple[int, QueryRecord]]) -> None:
        for generation, event in events:
            if self.stop.is_set():
                return
            if self.session is not None and generation == self.session.generation:
                self._run_one(event)

    def _tick(self) -> None:
        now = self._clock()
        if self.window is not None and _coalesce.due(self.window, self.wait) <= now:
            self._apply_window()
        if now >= self._next_reconcile and self.session is not None:
            self._reconcile("periodic")
        if self._metrics_due is not None and self._clock() >= self._metrics_due:
            self._flush_metrics()

    def _timeout(self) -> float:
        deadlines = [self._next_reconcile]
        if self.window is not None:
            deadlines.append(_coalesce.due(self.window, self.wait))
        if self._metrics_due is not None:
            deadlines.append(self._metrics_due)
        return max(0.0, min(deadlines) - self._clock())

    # --- records ----------------------------------------------------------------------------

    def _record(self, record: Record, queries: list[tuple[int, QueryRecord]],
                later: list[tuple[int, UserEvent]]) -> None:
        if record.member and record.number <= self._fresh_from:
            return  # the last `members` reply already holds it
        try:
            converted = convert(record.body, self.node)
        except EventError as exc:
            _log.error(f"watch: record skipped: {exc}")
            return
        if isinstance(converted, MemberRecord):
            _metrics.inc(_metrics.P + "events_total", type=converted.type)
            for message in converted.skipped:
                _log.error(f"member skipped: {message}")
            changes = [Change(converted.type, member) for member in converted.members]
            self.window = _coalesce.extend(self.window, changes, self._clock())
            return
        if isinstance(converted, QueryRecord):
            _metrics.inc(_metrics.P + "events_total", type="query")
            queries.append((record.generation, converted))
        else:
            _metrics.inc(_metrics.P + "events_total", type="user")
            later.append((record.generation, converted))

    def _apply_window(self) -> None:
        assert self.window is not None
        started = self._clock()
        events, self.model = _coalesce.merge(self.model, self.window.changes)
        changes = len(self.window.changes)
        self.window = None
        for kind, members in events:
            _log.debug(f"watch: {kind}", members=",".join(m.name for m in members), merged_from=changes)
        if events:
            # One run for the window: a reload shared by several templates runs once, after all.
            outcome = self.dispatcher.dispatch_all([MemberEvent(kind, members, self.node) for kind, members in events])
            self._ran("watch", outcome, started, membership=True)

    def _run_one(self, event: UserEvent | QueryRecord) -> None:
        started = self._clock()
        if isinstance(event, UserEvent):
            self._ran("watch", self.dispatcher.dispatch(event), started)
            return
        outcome = self.dispatcher.dispatch(event.query)
        if outcome.exit_code == EXIT_OK and outcome.reply and self.session is not None:
            try:
                self.session.respond(event.id, outcome.reply)
            except SerfRPCError as exc:  # too late, or a script of this node answered first
                _log.warning(f"watch: query {event.query.name!r}: reply not sent: {exc}")
        self._ran("watch", outcome, started)

    def _collapsed(self, marker: Collapsed) -> bool:
        """Log the collapse; True when a reconcile must follow (member records were dropped)."""
        what = []
        if marker.members:
            what.append(f"{marker.members} member record(s) collapsed into one reconcile")
        if marker.others:
            what.append(f"{marker.others} user event(s) or query(ies) dropped, the oldest first")
        _log.warning(f"watch: more than {self.inbox.bound} records queued (the handlers are behind): "
                     + "; ".join(what))
        return marker.members > 0

    # --- reconciling ------------------------------------------------------------------------

    def _reconcile(self, why: str) -> None:
        try:
            self._reconcile_now(why)
        except SerfRPCError as exc:
            if not self.stop.is_set():  # else the call only gave up waiting: we are stopping
                self._reconnect(str(exc))

    def _reconcile_now(self, why: str) -> int:
        """Every handler's state from `members`; the number of alive members. Raises SerfRPCError."""
        assert self.session is not None
        started = self._clock()
        reply, mark = self.session.members()
        found, model = snapshot(reply)
        for message in found.skipped:
            _log.error(f"member skipped: {message}")
        if why == "periodic":
            self._report_drift(model)
        self.model, self.window, self._fresh_from = model, None, mark
        outcome = self.dispatcher.reconcile(Membership(lambda: found))
        if outcome.failed:
            _log.error(f"watch: reconcile ({why}): {outcome.summary()}")
        _log.debug(f"watch: reconciled ({why})", alive=len(found.alive), failed=len(found.failed))
        self._ran("reconcile", outcome, started)
        return len(found.alive)

    def _report_drift(self, model: dict[str, Known]) -> None:
        """Members whose state the events did not bring (lost by the agent's buffer, or still
        in Serf's own coalescing): the reconcile repairs them; say how many."""
        pending = self.model
        if self.window is not None:
            pending = dict(_coalesce.merge(self.model, self.window.changes)[1])
        served = {"alive", "failed"}
        differ = sorted(name for name in {*pending, *model}
                        if (pending[name] if name in pending and pending[name].status in served else None)
                        != (model[name] if name in model and model[name].status in served else None))
        if differ:
            _log.info(f"watch: periodic reconcile: {len(differ)} member(s) differed from the events received "
                      "(events still in Serf's coalescing, or lost)", members=",".join(differ[:20]))

    def _ran(self, command: str, outcome: Outcome, started: float, membership: bool = False) -> None:
        """After each run: schedule the next reconcile (sooner after a failed membership
        change: RETRY, doubling while reconciles fail too), record metrics."""
        now = self._clock()
        if command == "reconcile" or membership:
            if outcome.failed:
                self._retry = min(max(self._retry * 2, RETRY), self.config.reconcile_interval)
                soon = now + self._retry
                self._next_reconcile = soon if command == "reconcile" else min(self._next_reconcile, soon)
            elif command == "reconcile":
                self._retry = 0.0
                self._next_reconcile = now + self.config.reconcile_interval
        if self.config.metrics:
            _metrics.run_finished(command, outcome.exit_code, now - started, time.time(), self._handlers)
            if self._metrics_due is None:
                self._metrics_due = now + METRICS_EVERY

    def _flush_metrics(self) -> None:
        if self._metrics_due is None or not self.config.metrics:
            return
        self._metrics_due = None
        try:
            _metrics.flush(self.config.metrics)
        except (OSError, SerfHandlersError) as exc:
            _log.error(f"metrics: cannot write {self.config.metrics}: {exc}")

    # --- the connection ---------------------------------------------------------------------

    def _reconnect(self, reason: str) -> None:
        _log.warning(f"watch: lost the serf agent at {self._where} ({reason}); reconnecting "
                     "(events until then are lost: a reconcile follows)")
        self._drop_session()
        self._connect(reason)

    def _connect(self, lost: str | None) -> bool:
        """Connect, subscribe, reconcile; retry with backoff until it works or `stop`."""
        delay, attempts, started, complained = self._backoff[0], 0, self._clock(), False
        said = ""  # the last refusal logged: a changed token or filter must not retry in silence
        while not self.stop.is_set():
            attempts += 1
            self._generations += 1
            try:
                self.session = self._open(self.inbox, self._generations, self.stop)
                if self.filter:
                    self.session.stream(self.filter)
                self.node = local_node(self.session.stats())
                alive = self._reconcile_now("connect")
            except Refused as exc:
                self._drop_session()
                if lost is None and not complained:
                    raise ConfigError(f"serf agent at {self._where}: {exc}") from None
                reason = str(exc)
                if reason != said:
                    _log.warning(f"watch: serf agent at {self._where} refused us ({reason}); retrying")
                    said = reason
            except SerfRPCError as exc:
                self._drop_session()
                reason = str(exc)
            else:
                stream = self.filter or "none: no handler takes events"
                if lost is None:
                    _log.info(f"watch: connected to the serf agent at {self._where} as {self.node.name!r}; "
                              f"reconciled {alive} alive member(s)", stream=stream)
                else:
                    _log.info(f"watch: the serf agent at {self._where} is back after "
                              f"{self._clock() - started:.1f} s ({attempts} attempt(s)); reconciled {alive} "
                              f"alive member(s)", stream=stream)
                return True
            if not complained and lost is None:
                _log.warning(f"watch: serf agent at {self._where} not reachable ({reason}); retrying")
            complained = True
            _log.debug(f"watch: connecting failed: {reason}", attempt=attempts)
            self.stop.wait(delay)
            delay = min(delay * 2, self._backoff[1])
        return False

    def _drop_session(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def _reload(self) -> None:
        try:
            config, dispatcher = self._load()
        except SerfHandlersError as exc:
            _log.error(f"watch: SIGHUP: config not reloaded, the running one stays: {exc}")
            return
        old = self.filter
        self._apply_config(config, dispatcher)
        _log.info(f"watch: SIGHUP: config reloaded from {config.source}", stream=self.filter or "none")
        if self.filter != old:
            self._drop_session()
            self._connect("the stream's event types changed")
        else:
            self._reconcile("config reloaded")


class signals:
    """While active, SIGTERM, SIGINT and SIGHUP reach `watcher.signal` through a pipe and a
    thread (`signal.set_wakeup_fd`): a Python signal handler runs in the middle of whatever
    the main thread does, and must not take the queue's lock itself."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher
        self._read_fd, self._write_fd = os.pipe()
        self._old: dict[int, object] = {}
        self._old_fd = -1
        self._thread = threading.Thread(target=self._relay, name="signals", daemon=True)

    def __enter__(self) -> None:
        os.set_blocking(self._write_fd, False)
        self._thread.start()
        self._old_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in self.SIGNALS:
            self._old[signum] = signal.signal(signum, _ignore)

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._write_fd)  # the relay thread reads EOF and ends
        self._thread.join(2.0)
        os.close(self._read_fd)

    def _relay(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in self.SIGNALS:
                    self._watcher.signal(signum)


def _ignore(signum: int, frame: object) -> None:
    """The Python-level handler: the wakeup fd carries the signal to the relay thread."""


def serve(
    config: Config,
    dispatcher: Dispatcher,
    load: Callable[[], tuple[Config, Dispatcher]],
    rpc_addr: str,
    rpc_auth: str | None,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> int:
    """`serf-handle watch`: run until SIGTERM; 0. Raises ConfigError for a bad address, or
    when the agent refuses the handshake, the token or the event types at the start."""
    from ._rpc import Client, parse_rpc_addr

    try:
        parse_rpc_addr(rpc_addr)
    except SerfRPCError as exc:
        raise ConfigError(str(exc)) from None

    def open(inbox: Inbox, generation: int, cancel: threading.Event) -> Session:
        client = Client(rpc_addr, inbox, generation, cancel)
        try:
            client.open(rpc_auth)
        except BaseException:
            client.close()
            raise
        return client

    watcher = Watcher(config, dispatcher, open, load, rpc_addr, max_queue)
    with signals(watcher):
        return watcher.run()
