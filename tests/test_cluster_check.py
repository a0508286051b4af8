"""`serf-handle cluster-check` without a cluster: the load balancer's digest reply, the parsing of
`serf query -format json` output and of the replies, the verdict, and the CLI against a fake
`serf` (the real thing, with real agents and HAProxy: tests/integration/test_cluster_check.py)."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import pytest

from serf_handlers import cli, cluster
from serf_handlers.cluster import Answer, QueryResult
from serf_handlers.dispatch import reply_budget
from serf_handlers.errors import SerfRPCError
from serf_handlers.events import Node, Query
from serf_handlers.handlers.haproxy import HAProxyHandler, _state
from serf_handlers.handlers.haproxy._report import digest_line
from serf_handlers.handlers.haproxy._servers import Server
from serf_handlers.handlers.haproxy._state import State

LINE = re.compile(r"digest=[0-9a-f]{16} servers=\d+ backends=\d+ kept_failed=\d+\n")
D1, D2, D3 = "0123456789abcdef", "fedcba9876543210", "00000000ffffffff"


def server(node: str, port: int = 80, backend: str = "web", weight: int = 1, **flags: bool) -> Server:
    return Server(node, node, "10.0.0.1", port, weight, backend, {"role": "web"}, **flags)


def state(*servers: Server) -> State:
    return State({s.node: s for s in servers}, None)


# --- the load balancer's reply -----------------------------------------------------------


def test_digest_line_is_one_short_line_of_what_is_served() -> None:
    line = digest_line(state(server("web1"), server("web2"), server("a1", backend="api")), "web")
    assert LINE.fullmatch(line)
    assert line.endswith(" servers=3 backends=2 kept_failed=0\n")
    expected = "".join(sorted(f"{b} {n} 10.0.0.1 80 1 ready\n" for b, n in [("web", "web1"), ("web", "web2"),
                                                                            ("api", "a1")]))
    assert line.startswith(f"digest={hashlib.sha256(expected.encode()).hexdigest()[:16]} ")


def test_digest_does_not_depend_on_order_tags_or_history() -> None:
    a = state(server("web1"), server("web2"))
    b = State({"web2": server("web2")._replace(tags={"x": "y"}), "web1": server("web1")}, {}, (("web", "old"),))
    assert digest_line(a, "web") == digest_line(b, "web")


def test_an_empty_load_balancer_has_a_digest_too() -> None:
    assert digest_line(state(), "web") == (
        f"digest={hashlib.sha256(b'').hexdigest()[:16]} servers=0 backends=1 kept_failed=0\n"
    )


BASE = [server("web1"), server("web2")]


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param([server("web1"), server("web2", port=81)], id="port"),
        pytest.param([server("web1"), server("web2", weight=5)], id="weight"),
        pytest.param([server("web1"), server("web2", drain=True)], id="drain"),
        pytest.param([server("web1"), server("web2", maint=True)], id="maint"),
        pytest.param([server("web1"), server("web2", backend="api")], id="backend"),
        pytest.param([server("web1"), server("web2")._replace(addr="10.0.0.2")], id="address"),
        pytest.param([server("web1"), server("web2")._replace(node="web 2")], id="node name"),
        pytest.param([server("web1")], id="one missing"),
        pytest.param([*BASE, server("web3")], id="one more"),
    ],
)
def test_digest_changes_with_anything_haproxy_would_serve_differently(changed: list[Server]) -> None:
    assert digest_line(state(*changed), "web").split()[0] != digest_line(state(*BASE), "web").split()[0]


def test_kept_failed_servers_are_counted() -> None:
    line = digest_line(state(server("web1"), server("web2", failed=True)), "web")
    assert line.endswith(" servers=2 backends=1 kept_failed=1\n")


def test_the_handler_answers_the_digest_payload_and_still_the_plain_query(tmp_path: Path) -> None:
    handler = HAProxyHandler(config=str(tmp_path / "haproxy.cfg"), state=str(tmp_path / "state.json"))
    _state.save(str(tmp_path / "state.json"), state(server("web1")))
    reply = handler(Query("backends", 1, b"digest\n", Node("lb")))
    assert isinstance(reply, str) and LINE.fullmatch(reply)
    assert len(reply.encode()) < reply_budget("x" * 200)
    assert handler(Query("backends", 1, b"", Node("lb"))) == "web: web1=10.0.0.1:80\n"
    (tmp_path / "state.json").write_text("{not json")
    assert handler(Query("backends", 1, b"digest\n", Node("lb"))) == "error=state_unreadable\n"


# --- `serf query -format json` output ------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        pytest.param(
            json.dumps({"Acks": ["b", "a"], "Responses": {"a": f"digest={D1} servers=1 backends=1 kept_failed=0\n"}}),
            QueryResult(("b", "a"), {"a": f"digest={D1} servers=1 backends=1 kept_failed=0\n"}),
            id="one acked and answered, one only acked",
        ),
        pytest.param('{"Acks": null, "Responses": {}}', QueryResult((), {}), id="nobody matched (real serf)"),
        pytest.param('{"Acks": [], "Responses": null}', QueryResult((), {}), id="null responses"),
        pytest.param('{\n  "Acks": [\n    "lb 2"\n  ],\n  "Responses": {}\n}\n', QueryResult(("lb 2",), {}),
                     id="indented, a name with a space"),
    ],
)
def test_parse_query_output(output: str, expected: QueryResult) -> None:
    assert cluster.parse_query_output(output.encode()) == expected


@pytest.mark.parametrize(
    ("output", "message"),
    [
        pytest.param("Query 'backends' dispatched\n", "invalid JSON", id="text format"),
        pytest.param("[]", "not an object", id="a list"),
        pytest.param('{"Acks": "a", "Responses": {}}', "'Acks' is not a list", id="acks a string"),
        pytest.param('{"Acks": [1], "Responses": {}}', "'Acks' is not a list", id="acks numbers"),
        pytest.param('{"Acks": [], "Responses": ["a"]}', "'Responses' is not an object", id="responses a list"),
        pytest.param('{"Acks": [], "Responses": {"a": 1}}', "'Responses' is not an object", id="a reply not text"),
    ],
)
def test_parse_query_output_rejects(output: str, message: str) -> None:
    with pytest.raises(SerfRPCError, match=re.escape(message)):
        cluster.parse_query_output(output)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(f"digest={D1} servers=3 backends=1 kept_failed=0\n", Answer("lb", D1, 3, 1, 0), id="ours"),
        pytest.param(f"digest={D1} servers=3 backends=2 kept_failed=1 later=x\n", Answer("lb", D1, 3, 2, 1),
                     id="an unknown word from a newer version"),
        pytest.param(f"1.2.3\ndigest={D1} servers=3 backends=1 kept_failed=0\n", Answer("lb", D1, 3, 1, 0),
                     id="another handler answered first"),
        pytest.param("error=state_unreadable\n", Answer("lb", problem="error: state_unreadable"), id="error"),
        pytest.param("web: web1=10.0.0.1:80\n", Answer("lb", problem="unexpected answer: 'web: web1=10.0.0.1:80'"),
                     id="an older serf-handle's summary"),
        pytest.param("digest=xyz servers=3 backends=1 kept_failed=0\n",
                     Answer("lb", problem="unexpected answer: 'digest=xyz servers=3 backends=1 kept_failed=0'"),
                     id="not hex"),
        pytest.param(f"digest={D1} servers=3\n", Answer("lb", problem=f"unexpected answer: 'digest={D1} servers=3'"),
                     id="counts missing"),
        pytest.param("", Answer("lb", problem="unexpected answer: ''"), id="empty"),
    ],
)
def test_parse_reply(reply: str, expected: Answer) -> None:
    assert cluster.parse_reply("lb", reply) == expected


def test_answers_lists_silent_load_balancers_and_unexpected_repliers() -> None:
    result = QueryResult(("lb1", "lb2"), {"lb1": f"digest={D1} servers=1 backends=1 kept_failed=0",
                                          "late": f"digest={D1} servers=1 backends=1 kept_failed=0"})
    found = cluster.answers(["lb1", "lb2", "lb3"], result)
    assert [(a.node, a.problem) for a in found] == [
        ("late", None), ("lb1", None), ("lb2", cluster.NO_REPLY), ("lb3", cluster.NO_ACK)
    ]
    assert cluster.NO_REPLY.startswith("no answer (acked") and cluster.NO_ACK.startswith("no answer (no ack")


def test_query_argv_anchors_the_role_and_passes_no_secret() -> None:
    assert cluster.query_argv("serf", "backends", "lb.x", "127.0.0.1:7373", 2.5) == [
        "serf", "query", "-format", "json", "-tag", r"role=^lb\.x$", "-timeout=2.500s",
        "-rpc-addr=127.0.0.1:7373", "backends", "digest",
    ]
    assert cluster.query_argv("serf", "q", "lb", None, None) == [
        "serf", "query", "-format", "json", "-tag", "role=^lb$", "q", "digest"
    ]
    assert cluster.query_argv("serf", "q", "lb", None, None, ["lb 2", "lb3"]) == [
        "serf", "query", "-format", "json", "-tag", "role=^lb$", "-node=lb 2", "-node=lb3", "q", "digest"
    ]


# --- the verdict ---------------------------------------------------------------------------


def ok(node: str, digest: str, servers: int = 3, kept: int = 0) -> Answer:
    return Answer(node, digest, servers, 1, kept)


@pytest.mark.parametrize(
    ("found", "code", "last", "marked"),
    [
        pytest.param([ok("lb1", D1), ok("lb2", D1)], 0, f"OK: 2 load balancer(s) (role=lb) serve the same 3 "
                     f"server(s) (digest {D1})", [], id="agree"),
        pytest.param([ok("lb1", D1)], 0, "OK: 1 load balancer(s)", [], id="one alone agrees with itself"),
        pytest.param([ok("lb1", D1, kept=1), ok("lb2", D1)], 0, "OK:", [], id="kept-failed counts may differ"),
        pytest.param([ok("lb1", D1), ok("lb2", D2), ok("lb3", D1)], 1,
                     f"DISAGREE: 3 load balancer(s) (role=lb): lb2 differ(s) from the majority ({D1} on lb1, lb3)",
                     ["lb2"], id="one odd one out"),
        pytest.param([ok("a", D1), ok("b", D1), ok("c", D1), ok("d", D2), ok("e", D3)], 1,
                     f"d, e differ(s) from the majority ({D1} on a, b, c)", ["d", "e"], id="two minorities"),
        pytest.param([ok("lb1", D1), ok("lb2", D2)], 1, "no majority: 2 different digests on lb1, lb2",
                     ["lb1", "lb2"], id="a tie names every one"),
        pytest.param([ok("lb1", D1), Answer("lb2", problem="no answer")], 1,
                     "DISAGREE: 2 load balancer(s) (role=lb): lb2: no valid answer", [], id="no answer"),
        pytest.param([ok("lb1", D1), ok("lb2", D2), ok("lb3", D2), Answer("lb4", problem="no answer")], 1,
                     f"lb1 differ(s) from the majority ({D2} on lb2, lb3); lb4: no valid answer", ["lb1"],
                     id="both"),
        pytest.param([Answer("lb1", problem="error: state_unreadable")], 1, "lb1: no valid answer", [],
                     id="an error answer"),
        pytest.param([], 2, "no alive member has role=lb: no load balancer to check", [], id="no load balancer"),
    ],
)
def test_verdict(found: list[Answer], code: int, last: str, marked: list[str]) -> None:
    lines, exit_code = cluster.verdict(found, "lb")
    assert exit_code == code
    assert last in lines[-1]
    assert [line.split()[0] for line in lines[:-1] if line.endswith("DIFFERS")] == marked
    assert len(lines) == len(found) + 1 or not found


def test_verdict_lines_are_aligned_and_escape_names() -> None:
    lines, _ = cluster.verdict([ok("lb1", D1), Answer("evil\nlb", problem="no answer")], "lb")
    assert lines[:2] == [f"lb1       digest={D1} servers=3 backends=1 kept_failed=0", "evil\\nlb  no answer"]


# --- the CLI, against a fake serf ----------------------------------------------------------


def fake_serf(
    tmp_path: Path, members: list[tuple[str, str, str]], query: object, exit_code: int = 0, again: object = None
) -> Path:
    """A `serf` whose `members` prints these (name, role, status) and whose `query` prints
    `query` as JSON (or as it is, when a str), and `again` the next times (default: the
    same); each query call appends its argv and SERF_RPC_AUTH to `queries` (JSON lines)."""
    listing = {"members": [{"name": n, "addr": "127.0.0.1:7946", "status": s, "tags": {"role": r}}
                           for n, r, s in members]}
    (tmp_path / "members.json").write_text(json.dumps(listing))
    for name, output in (("query.out", query), ("again.out", query if again is None else again)):
        (tmp_path / name).write_text(output if isinstance(output, str) else json.dumps(output))
    serf = tmp_path / "serf"
    serf.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"d = {str(tmp_path)!r}\n"
        "if sys.argv[1] == 'query':\n"
        "    first = not os.path.exists(d + '/queries')\n"
        "    open(d + '/queries', 'a').write(json.dumps([sys.argv[1:], os.environ.get('SERF_RPC_AUTH')]) + '\\n')\n"
        "    sys.stdout.write(open(d + ('/query.out' if first else '/again.out')).read())\n"
        f"    sys.exit({exit_code})\n"
        "sys.stdout.write(open(d + '/members.json').read())\n"
    )
    serf.chmod(0o755)
    return serf


def queries(tmp_path: Path) -> list[tuple[list[str], str | None]]:
    return [tuple(json.loads(line)) for line in (tmp_path / "queries").read_text().splitlines()]


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str,
    path: str | None = None,
) -> tuple[int, str, str]:
    for key in list(cli.os.environ):
        if key.startswith("SERF_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PATH", path or f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("SERF_HANDLERS_CONFIG", str(tmp_path / "config.yml"))
    monkeypatch.setenv("SERF_HANDLERS_CACHE_DIR", str(tmp_path / "cache"))
    if not (tmp_path / "config.yml").exists():
        (tmp_path / "config.yml").write_text("handlers: []\n")
    code = cli.main(["cluster-check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def reply(digest: str, servers: int = 2) -> str:
    return f"digest={digest} servers={servers} backends=1 kept_failed=0\n"


LBS = [("lb1", "lb", "alive"), ("lb2", "lb", "alive"), ("web1", "web", "alive"), ("old", "lb", "left")]


@pytest.mark.parametrize(
    ("members", "query", "code", "out"),
    [
        pytest.param(LBS, {"Acks": ["lb1", "lb2"], "Responses": {"lb1": reply(D1), "lb2": reply(D1)}}, 0,
                     [f"lb1  digest={D1}", f"lb2  digest={D1}", "OK: 2 load balancer(s) (role=lb)"], id="agree"),
        pytest.param(LBS, {"Acks": ["lb1", "lb2"], "Responses": {"lb1": reply(D1)}}, 1,
                     [f"lb1  digest={D1}", "lb2  no answer", "DISAGREE"], id="acked, no answer"),
        pytest.param([*LBS, ("lb3", "lb", "alive")], {"Acks": ["lb1", "lb2"], "Responses": {"lb1": reply(D1),
                     "lb2": reply(D1)}}, 1, ["lb3  no answer", "lb3: no valid answer"], id="not even acked"),
        pytest.param([*LBS, ("lb3", "lb", "alive")], {"Acks": ["lb1", "lb2", "lb3"], "Responses": {
                     "lb1": reply(D1), "lb2": reply(D2, 1), "lb3": reply(D1)}}, 1,
                     [f"lb2  digest={D2} servers=1 backends=1 kept_failed=0  DIFFERS", "lb2 differ(s)"],
                     id="an odd one out"),
        pytest.param([("web1", "web", "alive")], {"Acks": None, "Responses": {}}, 2, [], id="no load balancer"),
    ],
)
def test_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    members: list[tuple[str, str, str]], query: object, code: int, out: list[str],
) -> None:
    fake_serf(tmp_path, members, query)
    got, stdout, _ = run_cli(monkeypatch, capsys, tmp_path)
    assert got == code, stdout
    for text in out:
        assert text in stdout


def test_cli_asks_the_silent_ones_again_by_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lbs = [("lb1", "lb", "alive"), ("lb2", "lb", "alive"), ("lb3", "lb", "alive")]
    fake_serf(tmp_path, lbs, {"Acks": ["lb1", "lb3"], "Responses": {"lb1": reply(D1)}},
              again={"Acks": ["lb2"], "Responses": {"lb2": reply(D1)}})
    code, out, _ = run_cli(monkeypatch, capsys, tmp_path, "--timeout", "1")
    assert code == 1
    assert [argv[5:] for argv, _ in queries(tmp_path)] == [
        ["-timeout=1.000s", "backends", "digest"],
        ["-node=lb2", "-node=lb3", "-timeout=1.000s", "backends", "digest"],
    ]
    rows = out.splitlines()
    assert rows[:3] == [f"lb1  digest={D1} servers=2 backends=1 kept_failed=0",
                        f"lb2  digest={D1} servers=2 backends=1 kept_failed=0", f"lb3  {cluster.NO_REPLY}"]


def test_cli_passes_role_query_timeout_and_auth(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake_serf(tmp_path, [("h1", "haproxy", "alive")], {"Acks": ["h1"], "Responses": {"h1": reply(D1)}})
    (tmp_path / "config.yml").write_text(
        json.dumps({"handlers": [{"type": "haproxy", "query": "lbview", "state": str(tmp_path / "s.json"),
                                  "config": str(tmp_path / "h.cfg")}]})
    )
    code, _, _ = run_cli(monkeypatch, capsys, tmp_path, "--role", "haproxy", "--timeout", "4",
                         "--rpc-addr", "127.0.0.1:7999", "--rpc-auth", "s3cret")
    assert code == 0
    [(argv, auth)] = queries(tmp_path)
    assert argv == ["query", "-format", "json", "-tag", "role=^haproxy$", "-timeout=4.000s",
                    "-rpc-addr=127.0.0.1:7999", "lbview", "digest"]
    assert auth == "s3cret" and "s3cret" not in " ".join(argv)


@pytest.mark.parametrize(
    ("query", "exit_code", "message"),
    [
        pytest.param("Error connecting to Serf agent: refused\n", 1, "'serf query' failed: Error connecting",
                     id="serf fails"),
        pytest.param("not json", 0, "'serf query' printed invalid JSON", id="garbage"),
    ],
)
def test_cli_errors_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    query: str, exit_code: int, message: str,
) -> None:
    fake_serf(tmp_path, LBS, query, exit_code)
    code, _, err = run_cli(monkeypatch, capsys, tmp_path)
    assert code == 2 and message in err


def test_cli_without_serf_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, path=str(tmp_path / "empty"))
    assert code == 2 and "cannot run 'serf'" in err
