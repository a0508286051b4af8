"""A load balancer for the benchmarks: HAProxy plus the config of a `serf-handle` haproxy handler.

Three ways of applying a membership change, as in HAPROXY.md:
- `runtime`: master-worker HAProxy (`-W -db`), the handler's `socket` set: the runtime API,
  with `kill -USR2 <master>` only as the fallback;
- `reload`: master-worker HAProxy, no socket: rewrite + `kill -USR2 <master>`;
- `naive`: daemonized HAProxy (`-D`), rewrite + `haproxy -D -f cfg -p pid -sf $(cat pid)`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from procs import BENCH, Agent, Group, http_get, start_haproxy_daemon, start_haproxy_mw, wait_until

MODES = ("runtime", "reload", "naive")


class LoadBalancer:
    def __init__(
        self,
        group: Group,
        venv_bin: Path,
        workdir: Path,
        mode: str,
        port: int,
        check: bool = True,
        probes: bool = False,
        start: bool = True,
    ) -> None:
        assert mode in MODES, mode
        self.group = group
        self.bin = venv_bin
        self.serf_handle = str(venv_bin / "serf-handle")
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.port = port
        self.check = check
        self.probes = probes
        self.config = workdir / "haproxy.cfg"
        self.state = workdir / "state.json"
        self.yml = workdir / "config.yml"
        self.log = workdir / "handler.log"
        self.pidfile = workdir / "haproxy.pid"
        self.socket = workdir / "admin.sock"
        self.probe_file = workdir / "probes.txt"
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.env = {
            "SERF_HANDLERS_CACHE_DIR": str(workdir / "cache"),
            "BENCH_PROBE_FILE": str(self.probe_file),
        }
        if probes:
            self.env["PYTHONPATH"] = str(BENCH)
        self.write_yml(reload=None)
        if start:
            self.start()

    # --- configuration ---------------------------------------------------------------------

    def reload_argv(self) -> list[str]:
        if self.mode == "naive":
            # What a naive setup runs: a soft reload of a daemonized HAProxy. A fixed string,
            # no member data in it.
            cfg, pid = self.config, self.pidfile
            return ["sh", "-c", f"exec haproxy -D -f {cfg} -p {pid} -sf $(cat {pid})"]
        return ["kill", "-USR2", self.pidfile.read_text().split()[0]]

    def write_yml(self, reload: Sequence[str] | None) -> None:
        lines = [
            f"log: {{level: info, file: {self.log}}}",
            "handlers:",
        ]
        if self.probes:
            lines += ["  - type: probe:start", "    events: [member-join, member-leave, member-failed]"]
        lines += [
            "  - type: haproxy",
            f"    config: {self.config}",
            f"    state: {self.state}",
            f"    haproxy: {shutil.which('haproxy')}",
            f"    check: {'true' if self.check else 'false'}",
            f"    vars: {{bind: '127.0.0.1:{self.port}', socket: {self.socket}}}",
        ]
        if reload is not None:
            lines.append(f"    reload: {json.dumps(list(reload))}")
        if self.mode == "runtime":
            lines.append(f"    socket: {self.socket}")
        if self.probes:
            lines += ["  - type: probe:end", "    events: [member-join, member-leave, member-failed]"]
        self.yml.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        """Install the empty config (as an image does), start HAProxy, then set the reload argv."""
        self.run("render", "--write")
        if self.mode == "naive":
            start_haproxy_daemon(self.group, self.config, self.pidfile)
        else:
            self.haproxy = start_haproxy_mw(self.group, self.config, self.pidfile, name=f"haproxy-{self.dir.name}")
        wait_until(lambda: http_get(self.port)[0] == 503, timeout=10, what="haproxy answering 503 (no servers)")
        self.write_yml(self.reload_argv())
        self.run("check")  # also refreshes the parsed-config cache

    # --- running the handler -----------------------------------------------------------------

    def handler_command(self) -> str:
        """The -event-handler value for the lb serf agent."""
        return f"{self.serf_handle} --config {self.yml}"

    def event_env(self, event: str) -> dict[str, str]:
        return {
            **self.env,
            "SERF_EVENT": event,
            "SERF_SELF_NAME": "lb",
            "SERF_SELF_ROLE": "lb",
            "SERF_TAG_ROLE": "lb",
        }

    def run(self, *args: str, stdin: bytes = b"", event: str | None = None) -> None:
        env = {**os.environ, **(self.event_env(event) if event else self.env)}
        # Subcommand first, then --config: the form every version of the CLI accepts.
        done = subprocess.run([self.serf_handle, *args, "--config", str(self.yml)],
                              input=stdin, env=env, capture_output=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"serf-handle {' '.join(args) or event}: exit {done.returncode}: "
                               f"{done.stderr.decode(errors='replace')[-800:]}")

    def event(self, event: str, stdin: bytes) -> None:
        self.run(stdin=stdin, event=event)

    def agent(self, name: str = "lb", join: Agent | None = None, wait: bool = True) -> Agent:
        probe = self.dir / "serf_probe.sh"
        handlers = []
        if self.probes:
            from probe import SERF_PROBE_SH

            probe.write_text(SERF_PROBE_SH)
            probe.chmod(0o755)
            handlers.append(f"member-join,member-leave,member-failed={probe}")
        handlers.append(self.handler_command())
        return Agent(self.group, name, {"role": "lb"}, join=join, handlers=handlers, env=self.env, wait=wait)

    # --- what happened -----------------------------------------------------------------------

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    def reloads(self) -> int:
        return sum(1 for line in self.log_lines() if "haproxy: reloaded" in line)

    def runtime_changes(self) -> int:
        return sum(1 for line in self.log_lines() if "servers changed through the runtime API" in line)

    def handler_errors(self) -> list[str]:
        return [line for line in self.log_lines() if " ERROR " in line]

    def servers(self) -> set[str]:
        if not self.state.exists():
            return set()
        return set(json.loads(self.state.read_text())["servers"])

    def api(self, command: str) -> str:
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(self.socket))
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
