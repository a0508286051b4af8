"""The benchmarks' load balancer: the harness's (tests/harness.py), run from the throwaway install.

Three ways of applying a membership change, as in HAPROXY.md (the harness's `mode`):
- `runtime`: master-worker HAProxy (`-W -db`), the handler's `socket` set: the runtime API,
  with `kill -USR2 <master>` only as the fallback;
- `reload`: master-worker HAProxy, no socket: rewrite + `kill -USR2 <master>`;
- `naive`: daemonized HAProxy (`-D`), rewrite + `haproxy -D -f cfg -p pid -sf $(cat pid)`.
What the benchmarks add: the reload is a bare `kill` (no Python start-up in its cost), the log
is text (JSON would import `json` in every run), optional timestamp probes around the haproxy
handler (bench/probe.py), running the handler by hand, and counts read from its log.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Sequence

from procs import BENCH

from tests.harness import MODES, Agent, LoadBalancer, Processes

__all__ = ["MODES", "BenchLoadBalancer"]

PROBED = "    events: [member-join, member-leave, member-failed]"


class BenchLoadBalancer(LoadBalancer):
    def __init__(self, procs: Processes, venv_bin: Path, workdir: Path, mode: str, probes: bool = False) -> None:
        self.probes = probes
        self.probe_file = workdir / "probes.txt"
        env = {"BENCH_PROBE_FILE": str(self.probe_file)}
        if probes:
            env["PYTHONPATH"] = str(BENCH)
        super().__init__(procs, mode=mode, serf_handle=str(venv_bin / "serf-handle"), workdir=workdir,
                         log_format="text", count_reloads=False, env=env, agent=False)
        self.run("check")  # also refreshes the parsed-config cache

    def handler_entries(self, template: Path | None = None) -> list[str]:
        entries = super().handler_entries(template)
        if not self.probes:
            return entries
        return ["  - type: probe:start", PROBED, *entries, "  - type: probe:end", PROBED]

    def start_agent(self, name: str = "lb", join: Agent | None = None, wait: bool = True,
                    before: Sequence[str] = (), log_level: str = "info") -> Agent:
        if self.probes:
            from probe import SERF_PROBE_SH

            probe = self.dir / "serf_probe.sh"
            probe.write_text(SERF_PROBE_SH)
            probe.chmod(0o755)
            before = [f"member-join,member-leave,member-failed={probe}", *before]
        return super().start_agent(name, join, wait, before, log_level)

    # --- running the handler by hand ---------------------------------------------------------

    def event_env(self, event: str) -> dict[str, str]:
        return {
            **self.env,
            "SERF_EVENT": event,
            "SERF_SELF_NAME": "lb",
            "SERF_SELF_ROLE": "lb",
            "SERF_TAG_ROLE": "lb",
        }

    def event(self, event: str, stdin: bytes) -> None:
        self.run(stdin=stdin, env=self.event_env(event))

    # --- what happened -----------------------------------------------------------------------

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    def reload_count(self) -> int:
        """Reloads the handler logged (the bare `kill` counts nothing itself)."""
        return sum(1 for line in self.log_lines() if "haproxy: reloaded" in line)

    def runtime_changes(self) -> int:
        return sum(1 for line in self.log_lines() if "servers changed through the runtime API" in line)

    def handler_errors(self) -> list[str]:
        return [line for line in self.log_lines() if " ERROR " in line]

    def api(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(self.admin_socket))
            sock.sendall(command.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def live_servers(self, backend: str = "web") -> set[str]:
        """Server names HAProxy runs now (`show servers state`)."""
        names = set()
        for line in self.api(f"show servers state {backend}").splitlines()[2:]:
            fields = line.split()
            if len(fields) > 3:
                names.add(fields[3])
        return names
