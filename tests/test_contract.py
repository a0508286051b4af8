"""The handler contract (serf_handlers/protocols.py), checked once per handler at registration
by dispatch.capabilities; and the query reply budget, against the real serf binary."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from serf_handlers import ConfigError, Dispatcher, Event, Member, MemberEvent, Node, Query, reply_budget
from serf_handlers.config import build_dispatcher, parse_config
from serf_handlers.dispatch import QUERY_REPLY_BUDGET, Capabilities, capabilities
from serf_handlers.handlers.haproxy import HAProxyHandler
from serf_handlers.handlers.log import LogHandler
from support.processes import Agent, Processes

WEB = Member("web1", "10.0.0.1", "web")
DB = Member("db1", "10.0.0.2", "db")


class RoleFilter:
    """A handler that filters members by role itself, and can reconcile."""

    takes_role = True

    def __init__(self, role: str | None = "web") -> None:
        self.role = role
        self.seen: list[tuple[Member, ...]] = []
        self.reconciled: list[Member] = []

    def __call__(self, event: Event) -> None:
        assert isinstance(event, MemberEvent)
        self.seen.append(event.members)

    def reconcile(self, members: list[Member]) -> None:
        self.reconciled = list(members)


def haproxy(tmp_path: Path, **options: object) -> dict[str, object]:
    return {"type": "haproxy", "config": str(tmp_path / "h.cfg"), "state": str(tmp_path / "s.json"), **options}


def test_a_plain_handler_offers_nothing_more() -> None:
    nothing = Capabilities(None, None, None, None, False, None)
    assert capabilities(lambda event: None) == nothing
    assert capabilities(LogHandler()) == nothing


def test_the_haproxy_handler_offers_the_whole_contract(tmp_path: Path) -> None:
    handler = HAProxyHandler(role="api", config=str(tmp_path / "h.cfg"), state=str(tmp_path / "s.json"))
    found = capabilities(handler)
    assert found.reconciler is handler and found.reporter is handler and found.renderer is handler
    assert found.default_events == handler.default_events
    assert found.default_events[-1] == "query:backends"
    assert (found.takes_role, found.role) == (True, "api")
    assert found.checker is handler and found.certificates is handler and found.cluster_query == "backends"


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        pytest.param("self_check", "yes", "self_check: expected a method", id="self_check not callable"),
        pytest.param("refresh_certificates", 1, "refresh_certificates: expected a method", id="refresh not callable"),
        pytest.param("cluster_query", "", "cluster_query: expected a query name", id="empty query name"),
        pytest.param("cluster_query", 3, "cluster_query: expected a query name", id="query name not a string"),
    ],
)
def test_a_malformed_capability_is_named(attribute: str, value: object, message: str) -> None:
    class Plugin:
        def __call__(self, event: object) -> None:
            return None

    handler = Plugin()
    setattr(handler, attribute, value)
    with pytest.raises(ConfigError, match=message):
        capabilities(handler)


@pytest.mark.parametrize("role", ["api", None])
def test_a_handler_that_filters_itself_keeps_its_role_and_sees_every_member(tmp_path: Path, role: str | None) -> None:
    entry = haproxy(tmp_path, **({"role": role} if role else {}))
    (registration,) = build_dispatcher(parse_config({"handlers": [entry]}, "test.yml")).registrations
    # The role is the configured one, or the handler's own default: `check` and reconcile use it.
    assert registration.role == (role or "web") and registration.takes_role
    # A member whose role changed away still reaches the handler, which removes its server.
    changed = MemberEvent("member-update", (Member("web1", "10.0.0.1", "db"),))
    dispatcher = build_dispatcher(parse_config({"handlers": [entry, {"type": "log", "role": "api"}]}, "test.yml"))
    assert [(r.name, seen) for r, seen in dispatcher.matching(changed)] == [("haproxy (handlers[0])", changed)]


def test_dispatch_hands_every_member_but_reconcile_only_those_of_the_role() -> None:
    handler = RoleFilter("web")
    dispatcher = Dispatcher()
    dispatcher.register(handler, "member-join")
    assert dispatcher.registrations[0].role == "web"
    assert dispatcher.dispatch(MemberEvent("member-join", (WEB, DB))).exit_code == 0
    assert handler.seen == [(WEB, DB)]
    assert dispatcher.reconcile([WEB, DB]).exit_code == 0
    assert handler.reconciled == [WEB]


def test_a_handler_that_filters_itself_without_a_role_keeps_the_configured_one() -> None:
    dispatcher = Dispatcher()
    dispatcher.register(RoleFilter(None), role="web")
    (registration,) = dispatcher.registrations
    assert (registration.role, registration.takes_role) == ("web", True)


def test_a_role_contradicting_the_handlers_own_is_refused() -> None:
    with pytest.raises(ConfigError, match="filters members of role 'web' itself, not 'db'"):
        Dispatcher().register(RoleFilter("web"), role="db")


def test_default_events_apply_only_when_none_are_given() -> None:
    class Defaulted:
        default_events = ("user:deploy",)

        def __call__(self, event: Event) -> None:
            pass

    dispatcher = Dispatcher()
    dispatcher.register(Defaulted())
    dispatcher.register(Defaulted(), "query")
    assert [r.events for r in dispatcher.registrations] == [("user:deploy",), ("query",)]


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        pytest.param({"reconcile": 3}, "reconcile: expected a method, got int", id="reconcile not callable"),
        pytest.param({"status": "ok"}, "status: expected a method, got str", id="status not callable"),
        pytest.param({"render": True}, "render: expected a method, got bool", id="render not callable"),
        pytest.param({"default_events": "user"}, "default_events: expected a non-empty tuple", id="events a str"),
        pytest.param({"default_events": ()}, "default_events: expected a non-empty tuple", id="no events"),
        pytest.param(
            {"default_events": ("user:",)}, "default_events: unknown event selector 'user:'", id="bad selector"
        ),
        pytest.param({"takes_role": True, "role": 7}, "role: expected a non-empty string or None", id="role"),
    ],
)
def test_a_handler_breaking_the_contract_is_a_config_error(attributes: dict[str, object], message: str) -> None:
    handler = type("Broken", (), {"__call__": lambda self, event: None, **attributes})()
    with pytest.raises(ConfigError, match=message):
        Dispatcher().register(handler)


def test_config_names_the_entry_of_a_handler_breaking_the_contract(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "broken_plugin.py").write_text(
        "class Handler:\n    default_events = ('member-joined',)\n    def __call__(self, event):\n        pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = parse_config({"handlers": [{"type": "broken_plugin:Handler"}]}, "test.yml")
    with pytest.raises(ConfigError) as info:
        build_dispatcher(config)
    assert str(info.value).startswith(
        "test.yml: handlers[0] (broken_plugin:Handler): default_events: unknown event selector 'member-joined'"
    )
    sys.modules.pop("broken_plugin", None)


def test_reply_budget_counts_the_node_name_in_utf8_bytes() -> None:
    assert reply_budget("") == QUERY_REPLY_BUDGET == 960
    assert reply_budget("lb") == 958
    assert reply_budget("\u00e9") == 958


def test_the_budget_leaves_room_for_the_largest_envelope() -> None:
    # Serf's envelope is 41 bytes for a short name and a young cluster (measured below), 2 more
    # for a name of 32 bytes or more, and at most 8 more as the Lamport time grows.
    assert QUERY_REPLY_BUDGET + 41 + 2 + 8 <= 1024


def test_a_reply_at_the_budget_is_sent(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    dispatcher = Dispatcher()
    dispatcher.register(lambda event: "x" * reply_budget("lb"), "query")
    assert dispatcher.dispatch(Query("q", 1, b"", Node("lb"))).reply == b"x" * 958


@pytest.mark.integration
def test_serf_carries_exactly_1024_bytes_of_response_message(procs: Processes, tmp_path: Path) -> None:
    """Serf itself, without serf-handle: a reply of 1024 - 41 - len(name) bytes arrives, one more is
    dropped. If a Serf upgrade changes its envelope, this fails and QUERY_REPLY_BUDGET needs a look.
    (The query ID is random: below 65536, about once in 65536 runs, it encodes 2 bytes shorter.)"""
    if shutil.which("serf") is None:
        pytest.skip("serf is not installed")
    script = tmp_path / "sized.py"
    script.write_text("import sys\nsys.stdout.write('x' * int(sys.stdin.read()))\n")
    agent = Agent(procs, "lb", handler=f"query:sized={sys.executable} {script}", log_level="warn")
    largest = 1024 - 41 - len("lb")
    for size, arrives in ((largest, True), (largest + 1, False), (reply_budget("lb"), True)):
        answer = json.loads(agent.serf("query", "-format", "json", "-timeout", "2s", "sized", str(size)).stdout)
        assert answer["Responses"] == ({"lb": "x" * size} if arrives else {}), size
