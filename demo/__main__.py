"""`make demo` (`python -m demo` from the repository root): a real Serf cluster on loopback, with serf-handle as its
event handler.

Part 1 shows every kind of Serf event reaching the log handler. Part 2 runs HAProxy
(master-worker) in front of nginx web nodes, each with its own serf agent, and shows the
haproxy handler following them through HAProxy's runtime API; beside it, in the same
agent's config, a `template` handler keeps a hosts file and a `file_sd` handler a
Prometheus target file. Every process the demo
starts is stopped by PID at the end, also on Ctrl-C or failure.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from support.processes import SERF_HANDLE, Agent, Processes, require, wait_until
from support.site import Site, bodies, load_balancer


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


class EventLog:
    """Follows the log handler's JSON lines and prints the new ones."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.shown = 0

    def records(self) -> list[dict[str, object]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def show_until(self, event: str, name: str | None = None, timeout: float = 20.0) -> None:
        def arrived() -> bool:
            return any(
                r.get("event") == event and (name is None or r.get("name") == name)
                for r in self.records()[self.shown:]
            )

        wait_until(arrived, timeout=timeout, what=f"{event} {name or ''}")
        time.sleep(0.3)  # let the rest of the batch land
        records = self.records()
        for record in records[self.shown:]:
            fields = {k: v for k, v in record.items() if k not in ("time", "level", "pid", "message")}
            print("   serf-handle logged:", " ".join(f"{k}={json.dumps(v)}" for k, v in fields.items()))
        self.shown = len(records)


def events_demo(procs: Processes, workdir: Path) -> None:
    workdir.mkdir()
    log = workdir / "events.jsonl"
    config = workdir / "config.yml"
    config.write_text(
        f"""log: {{level: info, format: json, file: {log}}}
handlers:
  - type: log
  - type: demo_handlers:status_reply
    events: [query:status]
"""
    )
    (workdir / "demo_handlers.py").write_text(
        "def status_reply(event):\n    return f'{event.node.name} is fine, payload {event.payload!r}'\n"
    )
    env = {"PYTHONPATH": str(workdir), "SERF_HANDLERS_CACHE_DIR": str(workdir / "cache")}
    events = EventLog(log)

    say("starting agent 'lb' with: -event-handler '" + f"{SERF_HANDLE} --config {config}'")
    lb = Agent(procs, "lb", {"role": "lb"}, handler=f"{SERF_HANDLE} --config {config}", env=env)
    events.show_until("member-join", "lb")

    say("web1 and 'web 2' join (one batch, a name with a space)")
    web1 = Agent(procs, "web1", {"role": "web", "port": "8081"}, join=lb)
    web2 = Agent(procs, "web 2", {"role": "web", "port": "8082"}, join=lb)
    events.show_until("member-join", "web 2")

    say("web1 changes a tag: serf tags -set port=9091")
    web1.serf("tags", "-set", "port=9091")
    events.show_until("member-update", "web1")

    say("'web 2' leaves gracefully (SIGINT). Serf 0.9 may re-deliver stale member-updates: handlers are idempotent")
    web2.leave()
    events.show_until("member-leave", "web 2")

    say("web3 joins, then is killed with SIGKILL (Serf declares it failed after ~7 s)")
    web3 = Agent(procs, "web3", {"role": "web"}, join=lb)
    events.show_until("member-join", "web3")
    web3.crash()
    events.show_until("member-failed", "web3", timeout=30)

    say("a user event: serf event deploy v1.2.3")
    lb.serf("event", "deploy", "v1.2.3")
    events.show_until("user", "deploy")

    say("a query: serf query -tag role=lb status hello")
    print(lb.serf("query", "-tag", "role=lb", "status", "hello").stdout.rstrip())
    events.show_until("query", "status")


def show_rotation(lb: Site) -> set[str]:
    seen = bodies(lb, 24)
    print(f"   24 requests to 127.0.0.1:{lb.port} were answered by: {', '.join(sorted(seen))}")
    return seen


def keep_files(lb: Site) -> tuple[Path, Path]:
    """A `template` handler (a hosts file) and a `file_sd` handler beside the haproxy handler."""
    source = lb.dir / "hosts.j2"
    source.write_text("# web nodes, from Serf ({{ members | length }})\n"
                      "{% for m in by_role.get('web', []) %}{{ m.addr }} {{ m.name }}.{{ vars.domain }}\n{% endfor %}")
    hosts, targets = lb.dir / "hosts", lb.dir / "targets" / "serf.json"
    targets.parent.mkdir()
    lb.more_handlers = [
        {"type": "template", "source": str(source), "destination": str(hosts), "state": str(lb.dir / "hosts.json"),
         "role": "web", "vars": {"domain": "demo.internal"}},
        {"type": "file_sd", "destination": str(targets), "state": str(lb.dir / "targets.json"), "role": "web",
         "port_tag": "port", "labels": ["port"]},
    ]
    lb.write_yml()
    return hosts, targets


def show_file(what: str, path: Path) -> None:
    print(f"   {what} ({path}):")
    print("".join(f"     {line}\n" for line in path.read_text().splitlines()), end="")


def haproxy_demo(procs: Processes) -> None:
    say("HAProxy (master-worker) with an empty backend, and agent 'lb' running the haproxy handler")
    lb = load_balancer(procs, live=True)
    hosts, targets = keep_files(lb)
    print(f"   handler config {lb.yml}:")
    print("".join(f"     {line}\n" for line in lb.yml.read_text().splitlines()), end="")

    say("three nginx web nodes join, each with its own serf agent (role=web, port=<its nginx>)")
    for name in ("web1", "web2", "web3"):
        lb.add_web(name, f"hello from {name}")
    wait_until(lambda: bodies(lb, 12) == {"hello from web1", "hello from web2", "hello from web3"},
               timeout=20, what="all three in rotation")
    show_rotation(lb)
    # The same run applies the handlers in turn: HAProxy's servers first, then these files.
    wait_until(lambda: targets.exists() and hosts.exists() and all(f"web{i}" in targets.read_text() for i in (1, 2, 3))
               and all(f"web{i}" in hosts.read_text() for i in (1, 2, 3)), timeout=20, what="the kept files")
    show_file("the template handler's hosts file", hosts)
    show_file("the file_sd handler's Prometheus targets", targets)

    say("web2 leaves gracefully: drained, put in maintenance and deleted through the runtime API")
    lb.webs["web2"].leave()
    wait_until(lambda: "hello from web2" not in bodies(lb, 12), timeout=20, what="web2 out of rotation")
    show_rotation(lb)

    say("web4 joins and gets traffic")
    lb.add_web("web4", "hello from web4")
    wait_until(lambda: "hello from web4" in bodies(lb, 12), timeout=20, what="web4 in rotation")
    show_rotation(lb)
    print(f"   HAProxy reloads so far: {lb.reload_count()} (every change went through the runtime API)")
    wait_until(lambda: "web4" in hosts.read_text() and "web2" not in hosts.read_text(), timeout=20,
               what="the hosts file following")
    show_file("the hosts file, following", hosts)

    say("serf query -tag role=lb backends: every load balancer's view")
    assert lb.agent is not None
    print(lb.agent.serf("query", "-tag", "role=lb", "backends").stdout.rstrip())

    say(f"serf-handle status --config {lb.yml}")
    print(subprocess.run([SERF_HANDLE, "status", "--config", str(lb.yml)], capture_output=True, text=True,
                         timeout=30).stdout.rstrip())


def main() -> int:
    require("serf", "haproxy", "nginx")
    with tempfile.TemporaryDirectory(prefix="serf-handlers-demo-") as tmp:
        procs = Processes(Path(tmp))
        try:
            events_demo(procs, Path(tmp) / "events")
        finally:
            say("stopping the first cluster")
            procs.stop_all()
        (Path(tmp) / "haproxy").mkdir()
        procs = Processes(Path(tmp) / "haproxy")
        try:
            haproxy_demo(procs)
        finally:
            say("stopping every process the demo started")
            procs.stop_all()
    print("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
