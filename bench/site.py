"""The benchmarks' load balancer: support's `Site`, run from the throwaway install.

Three ways of applying a membership change (`Site.serve`'s `mode`):
- `runtime`: master-worker HAProxy (`-W -db`), the handler's `socket` set: the runtime API,
  with `kill -USR2 <master>` only as the fallback;
- `reload`: master-worker HAProxy, no socket: rewrite + `kill -USR2 <master>`;
- `naive`: daemonized HAProxy (`-D`), rewrite + `haproxy -D -f cfg -p pid -sf $(cat pid)`.
Every reload command is one `sh` (no Python start-up in its cost) that also appends a line
to the site's `reloads` file: support's one reload counter.
What the benchmarks add: extra template vars (`extra_vars`, e.g. section 6's `tls_bind` and
`tls_certs`), a text log (JSON would import `json` in every run), optional
timestamp probes around the haproxy handler (bench/probe.py), running the handler by hand,
and counts read from its log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from support.admin import live_servers
from support.processes import Agent, Processes
from support.site import MODES, Site

from .probe import SERF_PROBE_SH
from .procs import BENCH

__all__ = ["MODES", "BenchSite"]

PROBED = ["member-join", "member-leave", "member-failed"]


class BenchSite(Site):
    def __init__(self, procs: Processes, venv_bin: Path, workdir: Path, mode: str, probes: bool = False,
                 extra_vars: Mapping[str, str] | None = None) -> None:
        self.probes = probes
        self.extra_vars = dict(extra_vars or {})  # added to the vars `serve` sets (bind, socket)
        self.probe_file = workdir / "probes.txt"
        super().__init__(workdir, serf_handle=str(venv_bin / "serf-handle"),
                         log={"level": "info", "file": str(workdir / "handler.log")})
        self.extra_env = {"BENCH_PROBE_FILE": str(self.probe_file)}
        if probes:
            self.extra_env["PYTHONPATH"] = str(BENCH)  # `type: probe:start` is bench/probe.py
        self.serve(procs, mode)
        self.must("check")  # also refreshes the parsed-config cache

    def handler_entries(self) -> list[dict[str, Any]]:
        entries = super().handler_entries()
        if self.extra_vars:
            entries[0]["vars"] = {**entries[0]["vars"], **self.extra_vars}
        if not self.probes:
            return entries
        return [{"type": "probe:start", "events": PROBED}, *entries, {"type": "probe:end", "events": PROBED}]

    def start_agent(self, name: str = "lb", join: Agent | None = None, wait: bool = True,
                    before: Sequence[str] = (), log_level: str = "info") -> Agent:
        if self.probes:
            probe = self.dir / "serf_probe.sh"
            probe.write_text(SERF_PROBE_SH)
            probe.chmod(0o755)
            before = [f"{','.join(PROBED)}={probe}", *before]
        return super().start_agent(name, join, wait, before, log_level)

    # --- running the handler by hand ---------------------------------------------------------

    def event_env(self, event: str) -> dict[str, str]:
        return self.env(event, SERF_TAG_ROLE="lb")

    def event(self, event: str, stdin: bytes) -> None:
        self.must(event=event, stdin=stdin)

    # --- what happened -----------------------------------------------------------------------

    def runtime_changes(self) -> int:
        return sum(1 for line in self.log_lines() if "servers changed through the runtime API" in line)

    def handler_errors(self) -> list[str]:
        return [line for line in self.log_lines() if " ERROR " in line]

    def live_servers(self, backend: str = "web") -> set[str]:
        """Server names HAProxy runs now (`show servers state`)."""
        return set(live_servers(self.admin_socket, backend))
