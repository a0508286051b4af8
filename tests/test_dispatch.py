from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import pytest

from serf_handlers import ConfigError, Dispatcher, Event, Member, MemberEvent, Query, UserEvent
from serf_handlers.dispatch import QUERY_REPLY_BUDGET, OwedReload, run_owed_reloads
from serf_handlers.errors import HandlerError

WEB = Member("web1", "10.0.0.1", "web")
DB = Member("db1", "10.0.0.2", "db")
JOIN = MemberEvent("member-join", (WEB, DB))
DEPLOY = UserEvent("deploy", 3, b"v1")
PING = Query("ping", 4, b"")


@pytest.mark.parametrize(
    ("selectors", "event", "runs"),
    [
        pytest.param(("*",), JOIN, True, id="* takes member events"),
        pytest.param(("*",), PING, True, id="* takes queries"),
        pytest.param(("member-join",), JOIN, True, id="exact member type"),
        pytest.param(("member-leave",), JOIN, False, id="other member type"),
        pytest.param(("user",), DEPLOY, True, id="user takes every user event"),
        pytest.param(("user:deploy",), DEPLOY, True, id="user:NAME matches"),
        pytest.param(("user:other",), DEPLOY, False, id="user:NAME other name"),
        pytest.param(("query:ping",), PING, True, id="query:NAME matches"),
        pytest.param(("query",), DEPLOY, False, id="query does not take user events"),
        pytest.param(("user:ping",), PING, False, id="user:NAME does not take a query of that name"),
        pytest.param((), DEPLOY, True, id="no selector means all"),
    ],
)
def test_selectors(selectors: tuple[str, ...], event: Event, runs: bool) -> None:
    seen: list[Event] = []
    dispatcher = Dispatcher()
    dispatcher.register(seen.append, *selectors)
    dispatcher.dispatch(event)
    assert bool(seen) == runs


@pytest.mark.parametrize("selector", ["member-joined", "user:", "query:", "users", "", "*:x", "member-join:x"])
def test_unknown_selector_is_a_config_error(selector: str) -> None:
    with pytest.raises(ConfigError, match="unknown event selector"):
        Dispatcher().register(print, selector)


def test_role_filters_members_and_skips_when_none_match() -> None:
    seen: list[Event] = []
    dispatcher = Dispatcher()
    dispatcher.register(seen.append, "member-join", role="web")
    dispatcher.register(seen.append, "member-join", role="cache")
    dispatcher.dispatch(JOIN)
    assert seen == [MemberEvent("member-join", (WEB,))]


def test_decorator_returns_the_function_and_runs_in_registration_order() -> None:
    dispatcher = Dispatcher()
    order: list[str] = []

    @dispatcher.on("member-join")
    def first(event: Event) -> None:
        order.append("first")

    @dispatcher.on("*")
    def second(event: Event) -> None:
        order.append("second")

    assert first.__name__ == "first"
    dispatcher.dispatch(JOIN)
    assert order == ["first", "second"]


def test_a_failing_handler_is_named_and_the_others_still_run(capsys: pytest.CaptureFixture[str]) -> None:
    dispatcher = Dispatcher()
    ran: list[str] = []

    @dispatcher.on()
    def broken(event: Event) -> None:
        raise AttributeError("inside the handler")

    dispatcher.register(lambda event: ran.append("after"), name="after")
    env = {"SERF_EVENT": "member-join"}
    assert dispatcher.run(env, b"web1\t10.0.0.1\tweb\t\n") == 1
    assert ran == ["after"]
    err = capsys.readouterr().err
    failure = (
        "handler tests.test_dispatch.test_a_failing_handler_is_named_and_the_others_still_run"
        ".<locals>.broken failed: AttributeError: inside the handler"
    )
    assert failure in err
    assert err.splitlines()[-1] == f"serf-handle: error: {failure}"


def test_bad_input_runs_nothing_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    dispatcher = Dispatcher()
    ran: list[Event] = []
    dispatcher.register(ran.append)
    assert dispatcher.run({"SERF_EVENT": "member-join"}, b"only\ttwo\n") == 2
    assert ran == []
    assert capsys.readouterr().err == "serf-handle: error: stdin line 1: expected 4 tab-separated fields, got 2\n"


QUERY_ENV = {"SERF_EVENT": "query", "SERF_QUERY_NAME": "ping", "SERF_QUERY_LTIME": "1", "SERF_SELF_NAME": "lb"}


@pytest.mark.parametrize(
    ("replies", "expected"),
    [
        pytest.param(["pong"], b"pong", id="str reply"),
        pytest.param([b"\x00\xff"], b"\x00\xff", id="bytes reply"),
        pytest.param([None], b"", id="no reply"),
        pytest.param(["a", None, b"b"], b"ab", id="replies joined in order"),
    ],
)
def test_query_reply_goes_to_stdout(replies: list[str | bytes | None], expected: bytes) -> None:
    dispatcher = Dispatcher()
    for reply in replies:
        dispatcher.register(lambda event, reply=reply: reply, "query:ping")
    out = io.BytesIO()
    assert dispatcher.run(QUERY_ENV, b"", out) == 0
    assert out.getvalue() == expected


def test_query_logs_never_reach_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    dispatcher = Dispatcher()
    dispatcher.register(lambda event: None, "query")  # the log handler would log here; see test_cli
    out = io.BytesIO()
    assert dispatcher.run(QUERY_ENV, b"", out) == 0
    assert capsys.readouterr().err == ""


def test_oversized_reply_is_an_error_not_a_silent_loss(capsys: pytest.CaptureFixture[str]) -> None:
    dispatcher = Dispatcher()
    limit = QUERY_REPLY_BUDGET - len("lb")
    dispatcher.register(lambda event: "x" * (limit + 1), "query")
    out = io.BytesIO()
    assert dispatcher.run(QUERY_ENV, b"", out) == 1
    assert out.getvalue() == b""
    assert "serf-handle: error:" in capsys.readouterr().err

    dispatcher = Dispatcher()
    dispatcher.register(lambda event: "x" * limit, "query")
    assert dispatcher.run(QUERY_ENV, b"", out) == 0
    assert out.getvalue() == b"x" * limit


def test_reconcile_hands_role_filtered_members_to_reconcilers() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.members: list[Member] = []

        def __call__(self, event: Event) -> None:
            pass

        def reconcile(self, members: list[Member]) -> None:
            self.members = list(members)

    recorder = Recorder()
    dispatcher = Dispatcher()
    dispatcher.register(recorder, "member-join", role="web")
    dispatcher.register(lambda event: None)  # not a reconciler: ignored
    assert dispatcher.reconcile([WEB, DB]).exit_code == 0
    assert recorder.members == [WEB]


# --- reloads that handlers share (protocols.ReloadSharer) ------------------------------------


class Sharer:
    """A handler whose every run (event or reconcile) owes a reload of `argv`; it records
    each outcome in `outcomes`. `log` is shared by the test's sharers: what ran, in order."""

    def __init__(self, argv: tuple[str, ...], log: list[str], broken: bool = False, fails: str = "") -> None:
        self.argv, self.log, self.broken, self.fails = argv, log, broken, fails
        self.outcomes: list[str | None] = []
        self._owed: list[OwedReload] | None = None

    def __call__(self, event: Event) -> None:
        self.reconcile([])

    def reconcile(self, members: list[Member]) -> None:
        self.log.append(f"run {self.argv[0]}")
        reload = OwedReload(self.argv, self._reload, self.outcomes.append)
        if self._owed is None:
            self.log.append("reloaded by itself")  # outside a dispatcher's run
        else:
            self._owed.append(reload)
        if self.broken:
            raise HandlerError("it failed after owing the reload")

    def _reload(self) -> None:
        self.log.append(f"reload {self.argv[0]}")
        if self.fails:
            raise HandlerError(self.fails)

    def sharing_reloads(self, owed: list[OwedReload]) -> contextlib.AbstractContextManager[None]:
        @contextlib.contextmanager
        def sharing() -> Iterator[None]:
            self._owed = owed
            try:
                yield
            finally:
                self._owed = None

        return sharing()


@pytest.mark.usefixtures("fresh_log")
@pytest.mark.parametrize("how", ["dispatch", "reconcile"])
def test_a_reload_shared_by_handlers_runs_once_per_run_after_all_of_them(how: str) -> None:
    log: list[str] = []
    sharers = [Sharer(("caddy",), log), Sharer(("nginx",), log), Sharer(("caddy",), log)]
    dispatcher = Dispatcher()
    for i, sharer in enumerate(sharers):
        dispatcher.register(sharer, "member-join", name=f"h{i}")
    outcome = dispatcher.dispatch(JOIN) if how == "dispatch" else dispatcher.reconcile([WEB])
    assert outcome.failed == ()
    assert log == ["run caddy", "run nginx", "run caddy", "reload caddy", "reload nginx"]  # in the order owed
    assert [s.outcomes for s in sharers] == [[None], [None], [None]]
    sharers[0]("event")  # outside a run, nothing is shared
    assert log[-1] == "reloaded by itself"


@pytest.mark.usefixtures("fresh_log")
def test_several_events_in_one_run_share_their_reloads() -> None:
    """Watch mode applies a merged window as one run (`dispatch_all`): a join and a leave of
    the same window reload a shared argv once, after both."""
    log: list[str] = []
    sharers = [Sharer(("caddy",), log), Sharer(("caddy",), log)]
    dispatcher = Dispatcher()
    for i, sharer in enumerate(sharers):
        dispatcher.register(sharer, "member-join", "member-leave", name=f"h{i}")
    leave = MemberEvent("member-leave", JOIN.members)
    assert dispatcher.dispatch_all([JOIN, leave]).failed == ()
    assert log == ["run caddy"] * 4 + ["reload caddy"]
    assert [s.outcomes for s in sharers] == [[None, None], [None, None]]


@pytest.mark.usefixtures("fresh_log")
def test_a_failed_shared_reload_fails_every_handler_that_owed_it(capsys: pytest.CaptureFixture[str]) -> None:
    log: list[str] = []
    down = "reload command ['caddy'] exited 1: down"
    sharers = [Sharer(("caddy",), log, fails=down), Sharer(("nginx",), log), Sharer(("caddy",), log, broken=True)]
    dispatcher = Dispatcher()
    for i, sharer in enumerate(sharers):
        dispatcher.register(sharer, name=f"h{i}")
    outcome = dispatcher.dispatch(JOIN)
    # h2 failed after owing the reload: still reloaded (its file is installed), and both failures said.
    assert log.count("reload caddy") == 1 and log.count("reload nginx") == 1
    assert outcome.failed == (("h2", "it failed after owing the reload"), ("h0", down), ("h2", down))
    assert [s.outcomes for s in sharers] == [[down], [None], [down]]
    err = capsys.readouterr().err
    assert f"ERROR handler h0 failed: {down}" in err and f"ERROR handler h2 failed: {down}" in err


@pytest.mark.usefixtures("fresh_log")
def test_a_reload_outcome_that_cannot_be_recorded_is_that_handlers_failure() -> None:
    log: list[str] = []
    sharers = [Sharer(("caddy",), log)]

    def unrecordable(outcome: str | None) -> None:
        raise HandlerError("state file: disk full")

    owed = [("h0", OwedReload(("caddy",), lambda: None, sharers[0].outcomes.append)),
            ("h1", OwedReload(("caddy",), lambda: None, unrecordable))]
    assert run_owed_reloads(owed) == [("h1", "reloaded; not recorded: state file: disk full")]
    assert sharers[0].outcomes == [None]


def test_sharing_reloads_must_be_a_method() -> None:
    class Bad:
        sharing_reloads = True

        def __call__(self, event: Event) -> None:
            pass

    with pytest.raises(ConfigError, match="sharing_reloads: expected a method"):
        Dispatcher().register(Bad())
