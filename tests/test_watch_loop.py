"""The watch loop (serf_handlers/watch/_loop.py) in-process, against a fake agent: what it
runs, answers, drops and reconciles, and how it reconnects, reloads and stops. The real
agent, HAProxy and signals are in tests/integration/test_watch.py."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from serf_handlers import _log
from serf_handlers.config import Config
from serf_handlers.dispatch import Dispatcher
from serf_handlers.errors import ConfigError, HandlerError, SerfRPCError
from serf_handlers.events import Event, Member, MemberEvent, Query, UserEvent
from serf_handlers.watch import Watcher
from serf_handlers.watch._inbox import Inbox, Lost
from serf_handlers.watch._rpc import Refused

IP = b"\x7f\x00\x00\x01"


def rpc_member(name: str, status: str = "alive", role: str = "web") -> dict[str, Any]:
    return {"Name": name, "Addr": IP, "Port": 7946, "Tags": {"role": role}, "Status": status}


class Recorder:
    """A handler that records what it is given, answers `ping`, and can be made to fail or wait."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.fail_events = False
        self.block: threading.Event | None = None  # while set-able and not set, a member event waits
        self.running = threading.Event()

    def __call__(self, event: Event) -> bytes | None:
        self.running.set()
        if self.block is not None and isinstance(event, MemberEvent):
            assert self.block.wait(10)
        if isinstance(event, MemberEvent):
            self.calls.append((event.type, tuple(m.name for m in event.members)))
            if self.fail_events:
                raise HandlerError("HAProxy said no")
        elif isinstance(event, UserEvent):
            self.calls.append(("user", event.name))
        elif isinstance(event, Query):
            self.calls.append(("query", event.payload))
            return b"pong from " + event.node.name.encode() if event.payload == b"ping" else None
        return None

    def reconcile(self, members: Sequence[Member]) -> None:
        self.calls.append(("reconcile", tuple(sorted(m.name for m in members))))

    def seen(self, kind: str) -> list[object]:
        return [what for k, what in self.calls if k == kind]


class FakeAgent:
    """The agent as the loop sees it through `Session`s: its members, the replies it got."""

    def __init__(self) -> None:
        self.members = [rpc_member("lb", role="lb"), rpc_member("web1")]
        self.streams: list[str] = []
        self.responses: list[tuple[int, bytes]] = []
        self.refuse: str | None = None  # open() raises Refused with this
        self.down = False  # open() raises SerfRPCError
        self.sessions: list[FakeSession] = []
        self.respond_error: str | None = None

    def open(self, inbox: Inbox, generation: int, cancel: threading.Event) -> FakeSession:
        if self.refuse:
            raise Refused(f"'auth': {self.refuse}")
        if self.down:
            raise SerfRPCError("cannot connect to 127.0.0.1:7373: Connection refused")
        session = FakeSession(self, inbox, generation)
        self.sessions.append(session)
        return session


class FakeSession:
    def __init__(self, agent: FakeAgent, inbox: Inbox, generation: int) -> None:
        self.agent, self.inbox, self.generation = agent, inbox, generation
        self.closed = False

    def stream(self, types: str) -> None:
        self.agent.streams.append(types)

    def stats(self) -> object:
        return {"agent": {"name": "lb"}, "tags": {"role": "lb"}}

    def members(self) -> tuple[object, int]:
        if self.agent.down or self.closed:
            raise SerfRPCError("'members': not connected")
        return {"Members": list(self.agent.members)}, self.inbox.received

    def respond(self, query_id: int, payload: bytes) -> None:
        if self.agent.respond_error:
            raise SerfRPCError(f"'respond': {self.agent.respond_error}")
        self.agent.responses.append((query_id, payload))

    def close(self) -> None:
        self.closed = True

    def send(self, body: object) -> None:
        """The agent streams one record."""
        self.inbox.put_record(self.generation, body)


def member_record(kind: str, *names: str) -> dict[str, Any]:
    return {"Event": kind, "Members": [rpc_member(n, "left" if kind == "member-leave" else "alive") for n in names]}


class Running:
    def __init__(self, watcher: Watcher, agent: FakeAgent, recorder: Recorder, log: list[str]) -> None:
        self.watcher, self.agent, self.recorder, self.log = watcher, agent, recorder, log
        self.result: list[object] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result.append(self.watcher.run())
        except Exception as exc:  # noqa: BLE001 - handed to the test
            self.result.append(exc)

    @property
    def session(self) -> FakeSession:
        return self.agent.sessions[-1]

    def until(self, predicate: Callable[[], object], what: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; calls: {self.recorder.calls}"
            time.sleep(0.01)

    def stop(self) -> object:
        self.watcher.signal(signal.SIGTERM)
        self.thread.join(5)
        assert not self.thread.is_alive()
        return self.result[0]


def config(**changes: Any) -> Config:
    return Config("test.yml")._replace(**changes)


@pytest.fixture
def log_lines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    lines: list[str] = []
    monkeypatch.setattr(_log, "record", lambda level, message, fields=None: lines.append(f"{level} {message}"))
    return lines


@pytest.fixture
def start(log_lines: list[str]) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(cfg: Config | None = None, load: Callable[[], tuple[Config, Dispatcher]] | None = None,
              agent: FakeAgent | None = None, max_queue: int = 1024, wait: bool = True) -> Running:
        recorder = Recorder()
        dispatcher = Dispatcher()
        dispatcher.register(recorder, "member-join", "member-leave", "member-failed", "member-update",
                            "member-reap", "user:deploy", "query:ping", name="recorder")
        agent = agent or FakeAgent()

        def no_reload() -> tuple[Config, Dispatcher]:
            raise ConfigError("test.yml: line 1, column 1: invalid YAML: found junk")

        watcher = Watcher(cfg or config(), dispatcher, agent.open, load or no_reload, "127.0.0.1:7373",
                          max_queue=max_queue, backoff=(0.01, 0.05))
        running = Running(watcher, agent, recorder, log_lines)
        running.thread.start()
        started.append(running)
        if wait:
            running.until(lambda: recorder.seen("reconcile"), "the first reconcile")
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()


def test_connect_streams_what_the_handlers_registered_then_reconciles(start: Callable[..., Running]) -> None:
    run = start()
    assert run.agent.streams == ["member-failed,member-join,member-leave,member-reap,member-update,query:ping,"
                                 "user:deploy"]
    assert run.recorder.calls == [("reconcile", ("lb", "web1"))]
    assert any("connected to the serf agent at 127.0.0.1:7373 as 'lb'; reconciled 2 alive" in line
               for line in run.log)
    assert run.stop() == 0


def test_member_records_already_queued_merge_into_one_event_per_type(start: Callable[..., Running]) -> None:
    run = start()
    run.recorder.block = threading.Event()  # hold the first run, so that the rest queue up
    run.session.send(member_record("member-join", "web2"))
    run.until(run.recorder.running.is_set, "the first run")
    for record in (member_record("member-join", "web3"), member_record("member-leave", "web3"),
                   member_record("member-join", "web4"), member_record("member-leave", "web1")):
        run.session.send(record)
    run.recorder.block.set()
    run.until(lambda: len(run.recorder.calls) >= 4, "the merged events")
    assert run.recorder.calls[1:] == [
        ("member-join", ("web2",)),
        ("member-join", ("web4",)),  # web3 joined and left inside the window: never applied
        ("member-leave", ("web1",)),
    ]


def test_wait_holds_changes_until_min_passes_quietly(start: Callable[..., Running]) -> None:
    run = start(config(wait_min=1.5, wait_max=10.0))
    run.session.send(member_record("member-join", "web2"))
    time.sleep(0.5)
    run.session.send(member_record("member-join", "web3"))
    last = time.monotonic()
    time.sleep(0.5)
    assert run.recorder.seen("member-join") == []  # 1 s after web2, only 0.5 s after web3
    run.until(lambda: run.recorder.seen("member-join"), "the window applied")
    assert time.monotonic() - last >= 1.4
    assert run.recorder.seen("member-join") == [("web2", "web3")]


def test_wait_never_holds_a_change_longer_than_max(start: Callable[..., Running]) -> None:
    run = start(config(wait_min=0.2, wait_max=0.5))
    started = time.monotonic()
    for n in range(12):  # a change every 0.1 s: never 0.2 s of quiet
        run.session.send(member_record("member-join", f"web{n + 2}"))
        time.sleep(0.1)
        if run.recorder.seen("member-join"):
            break
    assert run.recorder.seen("member-join"), "max passed without a run"
    assert time.monotonic() - started < 1.0


def test_a_query_is_answered_through_respond(start: Callable[..., Running]) -> None:
    run = start()
    run.session.send({"Event": "query", "ID": 3, "LTime": 1, "Name": "ping", "Payload": b"ping"})
    run.session.send({"Event": "query", "ID": 4, "LTime": 2, "Name": "ping", "Payload": b"quiet"})
    run.session.send({"Event": "user", "LTime": 1, "Name": "deploy", "Payload": None})
    run.until(lambda: run.recorder.seen("user"), "the user event")
    assert run.agent.responses == [(3, b"pong from lb")]  # an empty reply is not sent, as for a script
    assert run.recorder.seen("query") == [b"ping", b"quiet"]


def test_queries_run_ahead_of_the_member_window_and_user_events_queued_with_them(
        start: Callable[..., Running]) -> None:
    """Serf drops an answer after the query's timeout: a queued query never waits for the
    member-event or user-event runs queued with it (it still waits for a run under way)."""
    run = start()
    run.recorder.block = threading.Event()  # hold a first run, so that the rest queue up
    run.session.send(member_record("member-join", "web2"))
    run.until(run.recorder.running.is_set, "the first run")
    run.session.send({"Event": "user", "LTime": 1, "Name": "deploy", "Payload": None})
    run.session.send(member_record("member-join", "web3"))
    run.session.send({"Event": "query", "ID": 1, "LTime": 1, "Name": "ping", "Payload": b"ping"})
    run.session.send({"Event": "query", "ID": 2, "LTime": 2, "Name": "ping", "Payload": b"ping"})
    run.recorder.block.set()
    run.until(lambda: run.recorder.seen("user"), "the user event")
    assert [kind for kind, _ in run.recorder.calls[1:]] == ["member-join", "query", "query", "member-join", "user"]
    assert run.recorder.seen("member-join") == [("web2",), ("web3",)]
    assert run.agent.responses == [(1, b"pong from lb"), (2, b"pong from lb")]


def test_a_query_queued_with_a_collapse_is_answered_before_its_reconcile(start: Callable[..., Running]) -> None:
    run = start(max_queue=3)
    run.recorder.block = threading.Event()
    run.session.send(member_record("member-join", "web2"))
    run.until(run.recorder.running.is_set, "the first run")
    for n in range(5):
        run.session.send(member_record("member-join", f"storm{n}"))
    run.session.send({"Event": "query", "ID": 7, "LTime": 1, "Name": "ping", "Payload": b"ping"})
    run.recorder.block.set()
    run.until(lambda: len(run.recorder.seen("reconcile")) == 2, "the reconcile")
    assert [kind for kind, _ in run.recorder.calls[1:]] == ["member-join", "query", "reconcile"]
    assert run.agent.responses == [(7, b"pong from lb")]


def test_a_reply_that_cannot_be_sent_is_one_warning(start: Callable[..., Running]) -> None:
    agent = FakeAgent()
    agent.respond_error = "failed to respond to key query: response already sent"
    run = start(agent=agent)
    run.session.send({"Event": "query", "ID": 1, "LTime": 1, "Name": "ping", "Payload": b"ping"})
    run.until(lambda: any("reply not sent" in line for line in run.log), "the warning")
    assert [line for line in run.log if "reply not sent" in line] == [
        "warning watch: query 'ping': reply not sent: 'respond': failed to respond to key query: response already sent"]


def test_a_malformed_record_is_logged_and_the_stream_goes_on(start: Callable[..., Running]) -> None:
    run = start()
    run.session.send({"Event": "member-join", "Members": [{"Name": "evil", "Addr": b"\x01", "Status": "alive"}]})
    run.session.send({"Event": "nonsense"})
    run.session.send(member_record("member-join", "web2"))
    run.until(lambda: run.recorder.seen("member-join"), "the good record")
    assert run.recorder.seen("member-join") == [("web2",)]
    errors = [line for line in run.log if line.startswith("error")]
    assert errors[0].startswith("error member skipped: member-join record, Members[0] ('evil'): Addr")
    assert errors[1] == "error watch: record skipped: stream record: unknown Event str 'nonsense'"


def test_records_older_than_the_members_reply_are_dropped(start: Callable[..., Running]) -> None:
    holder: list[Running] = []
    run = start(load=lambda: (holder[0].watcher.config, holder[0].watcher.dispatcher))
    holder.append(run)
    run.recorder.block = threading.Event()
    run.session.send(member_record("member-join", "web2"))
    run.until(run.recorder.running.is_set, "the first run")
    run.session.send(member_record("member-leave", "web1"))  # queued behind the run ...
    run.agent.members = [rpc_member("lb", role="lb"), rpc_member("web2")]
    run.watcher.signal(signal.SIGHUP)  # ... and a reconcile (the reload's) reads the members after it
    run.recorder.block.set()
    run.until(lambda: len(run.recorder.seen("reconcile")) == 2, "the reload's reconcile")
    run.session.send(member_record("member-join", "web3"))
    run.until(lambda: len(run.recorder.seen("member-join")) == 2, "the newer record")
    assert run.recorder.seen("reconcile")[1] == ("lb", "web2")
    assert run.recorder.seen("member-leave") == []  # older news than the members list: dropped
    assert run.recorder.seen("member-join") == [("web2",), ("web3",)]


def test_a_lost_agent_is_reconnected_and_reconciled(start: Callable[..., Running]) -> None:
    agent = FakeAgent()
    run = start(agent=agent)
    first = run.session
    agent.down = True
    first.inbox.put_control(Lost(first.generation, "the agent closed the connection"))
    time.sleep(0.1)  # a few failed attempts
    agent.members.append(rpc_member("web2"))  # joined while nobody listened
    agent.down = False
    run.until(lambda: len(run.recorder.seen("reconcile")) == 2, "the reconcile after reconnecting")
    assert run.recorder.seen("reconcile")[1] == ("lb", "web1", "web2")
    assert first.closed and run.session is not first
    first.send(member_record("member-join", "ghost"))  # the old connection's: never run
    run.session.send(member_record("member-join", "web3"))
    run.until(lambda: run.recorder.seen("member-join"), "a record of the new connection")
    assert run.recorder.seen("member-join") == [("web3",)]
    warnings = [line for line in run.log if "lost the serf agent" in line or "is back" in line]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("warning watch: lost the serf agent at 127.0.0.1:7373 (the agent closed")
    assert "is back after" in warnings[1] and "reconciled 3 alive member(s)" in warnings[1]


def test_an_agent_down_at_start_is_waited_for(start: Callable[..., Running]) -> None:
    agent = FakeAgent()
    agent.down = True
    run = start(agent=agent, wait=False)
    time.sleep(0.1)
    assert run.recorder.calls == []
    agent.down = False
    run.until(lambda: run.recorder.seen("reconcile"), "the reconcile once it is up")
    assert [line for line in run.log if "not reachable" in line] == [
        "warning watch: serf agent at 127.0.0.1:7373 not reachable (cannot connect to 127.0.0.1:7373: "
        "Connection refused); retrying"]


def test_a_refused_token_at_start_is_a_config_error(start: Callable[..., Running]) -> None:
    agent = FakeAgent()
    agent.refuse = "Invalid authentication token"
    run = start(agent=agent, wait=False)
    run.thread.join(5)
    assert isinstance(run.result[0], ConfigError)
    assert str(run.result[0]) == "serf agent at 127.0.0.1:7373: 'auth': Invalid authentication token"


def test_a_collapsed_backlog_is_one_reconcile(start: Callable[..., Running]) -> None:
    run = start(max_queue=3)
    run.recorder.block = threading.Event()
    run.session.send(member_record("member-join", "web2"))
    run.until(run.recorder.running.is_set, "the first run")
    run.agent.members.append(rpc_member("web9"))
    for n in range(10):
        run.session.send(member_record("member-join", f"storm{n}"))
    run.recorder.block.set()
    run.until(lambda: len(run.recorder.seen("reconcile")) == 2, "the reconcile")
    assert run.recorder.seen("reconcile")[1] == ("lb", "web1", "web9")
    assert run.recorder.seen("member-join") == [("web2",)]  # no storm record ran on its own
    assert [line for line in run.log if "queued" in line] == [
        "warning watch: more than 3 records queued (the handlers are behind): 10 member record(s) collapsed "
        "into one reconcile"]


def test_a_failed_membership_run_brings_the_next_reconcile_forward(start: Callable[..., Running]) -> None:
    run = start(config(reconcile_interval=3600.0))
    run.recorder.fail_events = True
    run.session.send(member_record("member-join", "web2"))
    run.until(lambda: run.recorder.seen("member-join"), "the failing run")
    run.until(lambda: run.watcher._next_reconcile < time.monotonic() + 6, "the retry scheduled")
    assert run.watcher._next_reconcile > time.monotonic() + 3


def test_sighup_with_a_bad_config_keeps_the_running_one(start: Callable[..., Running]) -> None:
    run = start()
    run.watcher.signal(signal.SIGHUP)
    run.until(lambda: any("SIGHUP" in line for line in run.log), "the SIGHUP line")
    assert [line for line in run.log if "SIGHUP" in line] == [
        "error watch: SIGHUP: config not reloaded, the running one stays: test.yml: line 1, column 1: "
        "invalid YAML: found junk"]
    run.session.send(member_record("member-join", "web2"))
    run.until(lambda: run.recorder.seen("member-join"), "events still handled")


def test_sighup_with_a_good_config_reconciles_and_resubscribes_if_needed(start: Callable[..., Running]) -> None:
    other = Recorder()
    dispatcher = Dispatcher()
    dispatcher.register(other, "member-join", "member-leave", name="other")
    run = start(load=lambda: (config(source="new.yml"), dispatcher))
    run.watcher.signal(signal.SIGHUP)
    run.until(lambda: other.seen("reconcile"), "the new handler's reconcile")
    assert run.agent.streams[-1] == "member-join,member-leave"
    assert len(run.agent.sessions) == 2 and run.agent.sessions[0].closed


def test_sigterm_lets_the_run_under_way_finish(start: Callable[..., Running]) -> None:
    run = start()
    run.recorder.block = threading.Event()
    run.session.send(member_record("member-join", "web2"))
    run.until(run.recorder.running.is_set, "the run")
    run.session.send(member_record("member-join", "web3"))
    run.watcher.signal(signal.SIGTERM)
    time.sleep(0.1)
    assert run.thread.is_alive()  # still in the handler
    run.recorder.block.set()
    run.thread.join(5)
    assert run.result == [0]
    assert run.recorder.seen("member-join") == [("web2",)]  # finished; nothing new started
    assert run.session.closed


def test_sigterm_while_waiting_for_the_agent(start: Callable[..., Running]) -> None:
    agent = FakeAgent()
    agent.down = True
    run = start(agent=agent, wait=False)
    time.sleep(0.05)
    started = time.monotonic()
    assert run.stop() == 0
    assert time.monotonic() - started < 1
