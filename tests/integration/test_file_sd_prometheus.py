"""The `file_sd` handler feeding Debian's real Prometheus: serf agents on loopback, the load
balancer-like agent `lb` running `serf-handle` with a file_sd handler, and Prometheus (a child
of this test, on its own port and TSDB directory, never a service) reading the file through a
`file_sd_configs` glob. What counts is Prometheus' own view, `/api/v1/targets`: a join appears
with the copied labels, a tag change changes the label, a leave disappears, each within a
bounded wait. Prometheus passes file_sd changes on at most every 5 s (its discovery manager's
throttle), so each step takes up to about 5 s. The web nodes' metrics ports are nginx answering
one sample, so the targets are also scraped ("up").
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any

import pytest

from support.processes import SERF_HANDLE, Agent, Processes, cluster_sees, free_port, get, require, start_nginx
from support.processes import wait_until as _wait_until
from support.site import clean_environ

pytestmark = pytest.mark.integration

WAIT = 15.0  # a file change reaches the targets API within about 5 s (the discovery throttle), plus a refresh


class Prometheus:
    """Prometheus on 127.0.0.1 with one scrape job `serf` reading `files` (a glob)."""

    def __init__(self, procs: Processes, files: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("prometheus is not installed (Debian package `prometheus`: `make deps`)")
        self.port = free_port()
        self.dir = procs.workdir / "prometheus"
        self.dir.mkdir()
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "500ms"},
            "scrape_configs": [{"job_name": "serf",
                                "file_sd_configs": [{"files": [files], "refresh_interval": "1s"}]}],
        }, indent=1) + "\n")
        self.log = procs.workdir / "prometheus.log"  # Processes.start's log for the name "prometheus"
        self.proc = procs.start("prometheus", [
            binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=info",
        ])
        deadline = time.monotonic() + 20
        while get(self.port, path="/-/ready", timeout=1)[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                procs.stop(self.proc)
                tail = " | ".join(self.log.read_text(errors="replace").splitlines()[-5:])
                pytest.skip(f"prometheus did not start (exit {self.proc.returncode}): {tail}")
            time.sleep(0.1)

    def targets(self) -> dict[str, dict[str, Any]]:
        """The active targets of job `serf`, by their `node` label."""
        status, body = get(self.port, path="/api/v1/targets?state=active")
        assert status == 200, body
        active = json.loads(body)["data"]["activeTargets"]
        return {t["labels"]["node"]: t for t in active if t["labels"].get("job") == "serf"}

    def nodes(self) -> set[str]:
        return set(self.targets())

    def file_errors(self) -> list[str]:
        """What Prometheus' file discovery logged as an error (a half-written or invalid file)."""
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if "level=error" in line and ("discovery" in line or "file" in line)]


def timed(predicate: Any, what: str, detail: Any = str, since: float | None = None) -> float:
    """Seconds until `predicate` holds (bounded by WAIT), from `since` (default: now);
    on a timeout the error adds `detail()`."""
    started = time.monotonic() if since is None else since
    try:
        _wait_until(predicate, timeout=WAIT, interval=0.05, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {detail()}") from None
    return time.monotonic() - started


def test_prometheus_follows_joins_tag_changes_and_leaves(short_procs: Processes) -> None:
    require("serf", "nginx")
    procs = short_procs
    work = procs.workdir
    targets = work / "targets"
    targets.mkdir()
    prometheus = Prometheus(procs, str(targets / "*.json"))

    file = targets / "serf.json"
    config = work / "handler.yml"
    handler_log = work / "handler.jsonl"
    config.write_text(json.dumps({
        "log": {"level": "info", "format": "json", "file": str(handler_log)},
        "handlers": [{"type": "file_sd", "destination": str(file),
                      "state": str(work / "file_sd-state.json"),  # outside the glob's directory
                      "role": "web", "labels": ["dc", "app-version"]}],
    }, indent=1) + "\n")
    env = {"SERF_HANDLERS_CACHE_DIR": str(work / "cache")}
    lb = Agent(procs, "lb", {"role": "lb"}, handler=f"{SERF_HANDLE} --config {config}", env=env)

    ports = {}
    for name in ("web1", "web2", "web3"):
        ports[name] = free_port()
        start_nginx(procs, name, ports[name], body="serf_test_web_up 1")
    started = time.monotonic()
    webs = {name: Agent(procs, name, {"role": "web", "metrics_port": str(port), "dc": "dc1", "app-version": "1.0"},
                        join=lb, wait=False)
            for name, port in ports.items()}
    for web in webs.values():
        web.wait_ready()

    def why() -> str:
        log = handler_log.read_text()[-800:] if handler_log.exists() else "(none)"
        text = file.read_text() if file.exists() else "(none)"
        return f"Prometheus sees {sorted(prometheus.nodes())}; the file: {text}; handler log: {log}"

    appeared = timed(lambda: prometheus.nodes() == set(webs), "the joins", why, since=started)
    seen = prometheus.targets()
    for name, port in ports.items():
        assert seen[name]["labels"] == {"job": "serf", "instance": f"127.0.0.1:{port}", "node": name, "role": "web",
                                        "dc": "dc1", "app_version": "1.0"}
        assert seen[name]["discoveredLabels"]["__meta_filepath"] == str(file)
    # Prometheus scrapes each one at the port its tag gave (nginx answers one sample).
    scraped = timed(lambda: all(t["health"] == "up" for t in prometheus.targets().values()), "the scrapes",
                    lambda: {n: t["lastError"] for n, t in prometheus.targets().items()})

    # A tag change is a label change.
    webs["web3"].serf("tags", "-set", "dc=dc2")
    relabelled = timed(lambda: prometheus.targets()["web3"]["labels"].get("dc") == "dc2", "web3's new dc label", why)

    # A graceful leave disappears; the others stay.
    started = time.monotonic()
    webs["web2"].leave()
    left = timed(lambda: prometheus.nodes() == {"web1", "web3"}, "web2's leave", why, since=started)
    _wait_until(cluster_sees(lb, ["lb", "web1", "web3"]), what="the cluster without web2")

    assert prometheus.file_errors() == []  # never a half-written or invalid file
    assert sorted(p.name for p in targets.iterdir()) == ["serf.json"]  # no candidate left in the glob's directory
    status = subprocess.run([SERF_HANDLE, "--config", str(config), "status"], capture_output=True, text=True,
                            timeout=30, check=False, env={**clean_environ(), **env})
    assert status.returncode == 0 and "as installed" in status.stdout, status.stdout + status.stderr
    print(f"\nfile_sd → Prometheus: 3 joins listed {appeared:.2f} s after the agents started; all scraped "
          f"{scraped:.2f} s later; a tag change in {relabelled:.2f} s; a leave gone in {left:.2f} s")
