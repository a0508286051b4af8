"""Real serf agents on loopback; the log handler writes JSON lines that we read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serf_handlers.dispatch import QUERY_REPLY_BUDGET
from support.processes import SERF_HANDLE, Agent, Processes, cluster_sees, require, wait_until

pytestmark = pytest.mark.integration


def _events(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _seen(log: Path, event: str, **fields: object) -> list[dict]:
    return [r for r in _events(log) if r.get("event") == event and all(r.get(k) == v for k, v in fields.items())]


def test_real_serf_events_arrive_parsed(procs: Processes, tmp_path: Path) -> None:
    require("serf")
    log = tmp_path / "events.jsonl"
    config = tmp_path / "config.yml"
    config.write_text(
        f"""
log: {{level: info, format: json, file: {log}}}
handlers:
  - type: log
  - type: echo_plugin:pong
    events: [query:ping]
  - type: echo_plugin:sized
    events: [query:sized]
"""
    )
    env = {"PYTHONPATH": str(Path(__file__).parent), "SERF_HANDLERS_CACHE_DIR": str(tmp_path / "cache")}
    local = ("-profile=local",)  # Serf's loopback timings: a crash is reported failed sooner
    web1 = Agent(procs, "web1", {"role": "web", "port": "8081"}, extra=local)
    web2 = Agent(procs, "web 2", {"role": "web", "port": "8082", "list": "a,b", "eq": "x=y"}, join=web1, extra=local)
    web3 = Agent(procs, "web3", {"role": "web"}, join=web1, extra=local)
    wait_until(cluster_sees(web1, ["web1", "web 2", "web3"]), what="web nodes to form a cluster")

    # The load balancer joins last, so it learns all three in one batch.
    lb = Agent(procs, "lb", {"role": "lb"}, join=web1, handler=f"{SERF_HANDLE} --config {config}", env=env,
               extra=local)
    wait_until(lambda: len(_seen(log, "member-join")) >= 4, what="the batch join")
    joined = {r["name"]: r for r in _seen(log, "member-join")}
    assert set(joined) == {"lb", "web1", "web 2", "web3"}
    assert joined["web1"]["addr"] == "127.0.0.1"
    assert joined["web1"]["role"] == "web"
    assert joined["web1"]["tags"] == {"role": "web", "port": "8081"}
    # The documented rule: a comma starts a new tag only if `=` follows; a key ends at its first `=`.
    assert joined["web 2"]["tags"] == {"role": "web", "port": "8082", "list": "a,b", "eq": "x=y"}
    assert joined["lb"]["role"] == "lb"

    web1.serf("tags", "-set", "port=9999")
    wait_until(lambda: _seen(log, "member-update", name="web1"), what="the tag update")
    assert _seen(log, "member-update", name="web1")[-1]["tags"]["port"] == "9999"

    web2.leave()
    wait_until(lambda: _seen(log, "member-leave", name="web 2"), what="the graceful leave")

    web3.crash()
    wait_until(lambda: _seen(log, "member-failed", name="web3"), timeout=30, what="member-failed")

    lb.serf("event", "deploy", "v1.2.3 \u00e9")
    wait_until(lambda: _seen(log, "user", name="deploy"), what="the user event")
    record = _seen(log, "user", name="deploy")[-1]
    # Serf appends a newline to a payload that lacks one.
    assert record["payload_bytes"] == len("v1.2.3 \u00e9\n".encode())
    assert record["ltime"] >= 1

    answer = json.loads(lb.serf("query", "-format", "json", "-tag", "role=lb", "ping", "hello").stdout)
    assert answer["Responses"] == {"lb": "pong hello\n"}
    assert _seen(log, "query", name="ping")

    # The largest reply we allow really arrives; one byte more is refused by us, loudly.
    budget = QUERY_REPLY_BUDGET - len("lb")
    answer = json.loads(lb.serf("query", "-format", "json", "sized", str(budget)).stdout)
    assert answer["Responses"] == {"lb": "x" * budget}
    answer = json.loads(lb.serf("query", "-format", "json", "sized", str(budget + 1)).stdout)
    assert answer["Responses"] == {}
    wait_until(lambda: any("over Serf's limit" in r.get("message", "") for r in _events(log)), what="the error")
