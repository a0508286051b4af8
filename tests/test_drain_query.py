"""The `backends` query's `drained NODE` form: a stopping web node asks every load balancer
whether it has drained it (docker/common/serf-drain.sh), and each answers one short line from
its handler state. The payload is untrusted: a bad one gets a one-line error, never an exception."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serf_handlers.dispatch import reply_budget
from serf_handlers.drained import drained_node
from serf_handlers.events import Node, Query
from serf_handlers.handlers.haproxy import HAProxyHandler, _state
from serf_handlers.handlers.haproxy._report import drained_line
from serf_handlers.handlers.haproxy._servers import Server
from serf_handlers.handlers.haproxy._state import State


def server(node: str, **flags: bool) -> Server:
    return Server(node, node, "10.0.0.1", 80, 1, "web", {"role": "web"}, **flags)


READY, DRAIN, MAINT = server("web1"), server("web1", drain=True), server("web1", maint=True)
OTHER = server("web2")


def state(servers: list[Server], applied: list[Server] | None) -> State:
    return State({s.node: s for s in servers}, None if applied is None else {s.node: s for s in applied})


@pytest.mark.parametrize(
    ("servers", "applied", "reply"),
    [
        pytest.param([DRAIN, OTHER], [DRAIN, OTHER], "drained=yes state=drain\n", id="drained and applied"),
        pytest.param([MAINT], [MAINT], "drained=yes state=maint\n", id="in maintenance"),
        pytest.param([MAINT], [DRAIN], "drained=yes state=maint\n", id="drained, maint not applied yet"),
        pytest.param([OTHER], [OTHER], "drained=yes absent\n", id="never served"),
        pytest.param([], [], "drained=yes absent\n", id="empty load balancer"),
        pytest.param([DRAIN], [OTHER], "drained=yes state=drain\n", id="wanted drained, not added yet"),
        pytest.param([READY, OTHER], [READY, OTHER], "drained=no state=ready\n", id="ready"),
        pytest.param([DRAIN], [READY], "drained=no state=drain applying\n", id="drain not applied yet"),
        pytest.param([OTHER], [READY, OTHER], "drained=no state=removing\n", id="removal not applied yet"),
        pytest.param([OTHER], [DRAIN, OTHER], "drained=yes absent\n", id="removed, HAProxy still has it drained"),
        pytest.param([DRAIN], None, "drained=no state=unknown\n", id="what HAProxy runs is unknown"),
        pytest.param([server("web1", drain=True, failed=True)], [server("web1", drain=True, failed=True)],
                     "drained=yes state=drain\n", id="failed, kept drained"),
        pytest.param([server("web1", failed=True)], [server("web1", failed=True)], "drained=no state=ready\n",
                     id="failed, kept ready"),
    ],
)
def test_drained_line(servers: list[Server], applied: list[Server] | None, reply: str) -> None:
    assert drained_line(state(servers, applied), "web1") == reply


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(b"drained web1\n", "web1", id="as serf sends it"),
        pytest.param(b"drained web1", "web1", id="no newline"),
        pytest.param(b"drained web 4\n", "web 4", id="a space in the name"),
        pytest.param(b"drained  web1\n", " web1", id="a leading space is part of the name"),
        pytest.param("drained wéb\n".encode(), "wéb", id="unicode"),
        pytest.param(b"drained " + b"w" * 512, "w" * 512, id="512 bytes"),
        pytest.param(b"", None, id="empty: the server list"),
        pytest.param(b"digest\n", None, id="digest"),
        pytest.param(b"drainedweb1\n", None, id="another word"),
    ],
)
def test_drained_node(payload: bytes, expected: str | None) -> None:
    assert drained_node(payload) == expected


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        pytest.param(b"drained\n", "expected: drained NODE", id="no node"),
        pytest.param(b"drained \n", "expected: drained NODE", id="empty node"),
        pytest.param(b"drained\tweb1\n", "expected: drained NODE", id="tab separator"),
        pytest.param(b"drained web1\n\n", "control character in node name", id="two newlines"),
        pytest.param(b"drained web1\nweb2\n", "control character in node name", id="newline in name"),
        pytest.param(b"drained web\x00\n", "control character in node name", id="NUL"),
        pytest.param(b"drained web\x1b[2J\n", "control character in node name", id="terminal escape"),
        pytest.param("drained web\u0085\n".encode(), "control character in node name", id="C1 next line"),
        pytest.param(b"drained web\r\n", "control character in node name", id="CR"),
        pytest.param(b"drained \xff\xfe\n", "node name is not UTF-8", id="not UTF-8"),
        pytest.param(b"drained " + b"w" * 513, "node name over 512 bytes", id="513 bytes"),
        pytest.param(b"drained " + b"w" * 100_000, "node name over 512 bytes", id="100 KB"),
    ],
)
def test_a_bad_drained_payload_is_refused(payload: bytes, why: str) -> None:
    found = drained_node(payload)
    assert isinstance(found, ValueError) and str(found) == why


@pytest.fixture
def handler(tmp_path: Path) -> HAProxyHandler:
    _state.save(str(tmp_path / "state.json"), state([DRAIN, OTHER], [DRAIN, OTHER]))
    return HAProxyHandler(config=str(tmp_path / "haproxy.cfg"), state=str(tmp_path / "state.json"))


@pytest.mark.parametrize(
    ("payload", "reply"),
    [
        pytest.param(b"drained web1\n", "drained=yes state=drain\n", id="drained"),
        pytest.param(b"drained web2\n", "drained=no state=ready\n", id="ready"),
        pytest.param(b"drained web9\n", "drained=yes absent\n", id="unknown node"),
        pytest.param(b"drained\n", "error=bad_payload expected: drained NODE\n", id="no node"),
        pytest.param(b"drained web1\x00$(reboot)\n", "error=bad_payload control character in node name\n",
                     id="hostile name"),
        pytest.param(b"drained \xc3\n", "error=bad_payload node name is not UTF-8\n", id="truncated UTF-8"),
        pytest.param(b"drained " + b"A" * 2000, "error=bad_payload node name over 512 bytes\n", id="too long"),
        pytest.param(b"", "web: web1=10.0.0.1:80(drain) web2=10.0.0.1:80\n", id="plain query: the list"),
    ],
)
def test_the_handler_answers_one_short_line(handler: HAProxyHandler, payload: bytes, reply: str) -> None:
    got = handler(Query("backends", 1, payload, Node("lb")))
    assert got == reply
    assert isinstance(got, str) and len(got.encode()) < reply_budget("x" * 200)


def test_an_unreadable_state_is_one_error_line(handler: HAProxyHandler, tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{truncated")
    assert handler(Query("backends", 1, b"drained web1\n", Node("lb"))) == "error=state_unreadable\n"
    bad = handler(Query("backends", 1, b"drained \xff\n", Node("lb")))
    assert bad == "error=bad_payload node name is not UTF-8\n"  # judged before the state is read


def test_the_member_event_path_imports_nothing_new() -> None:
    """The query's helpers load only when a query asks (Serf starts a process per event)."""
    code = (
        "import sys; from serf_handlers.handlers.haproxy import _handler; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('serf_handlers'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "serf_handlers.handlers.haproxy._report" not in done.stdout.split()
