"""HAProxy's stats page and the metrics endpoints of a real load balancer, seen as a person
would: in headless Chromium (Debian's `chromium`).

- `stats_lb(procs)`: a load balancer on loopback (HAProxy in runtime-API mode, a serf agent
  running `serf-handle`, its `metrics:` file served by HAProxy's Lua), with the stats frontend
  on its own port; `add_webs` gives it web nodes (nginx + serf agent each).
- `chromium_dom(url)`, `chromium_screenshot(url, png)`: one headless Chromium run each, in a
  fresh profile directory, without network features beyond the page itself.

`python -m support.stats docs/stats.png` (`make screenshot`) builds the README's picture:
three web nodes, one of them stopped, so HAProxy marks it DOWN.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from support.processes import Agent, Processes, free_port, require, start_nginx, wait_until
from support.site import Site

REPO = Path(__file__).resolve().parent.parent
METRICS_LUA = REPO / "serf_handlers" / "templates" / "metrics.lua"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("chromium is not installed (Debian package `chromium`; `make deps` installs it)")
    return found


def _run_chromium(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        done = subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-1500:]}")
    return done


def chromium_dom(url: str) -> str:
    """The page's DOM after Chromium rendered it (`--dump-dom`)."""
    return _run_chromium(["--dump-dom", url]).stdout


def chromium_screenshot(url: str, png: Path, size: str = "1400,500") -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    _run_chromium([f"--screenshot={png}", f"--window-size={size}", url])
    if not png.exists() or png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise RuntimeError(f"chromium wrote no PNG at {png}")
    return png


def fetch(url: str, auth: tuple[str, str] | None = None, timeout: float = 5) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth is not None:
        import base64

        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


class StatsLB:
    """A load balancer whose HAProxy also serves `/stats`, `/metrics` and `/metrics/serf-handlers`."""

    def __init__(self, procs: Processes, auth: str | None = None) -> None:
        require("serf", "haproxy", "nginx")
        self.procs = procs
        self.stats_port = free_port()
        self.site = Site(procs.workdir, log={"level": "info", "format": "json", "file": str(procs.workdir / "h.jsonl")})
        self.site.metrics = procs.workdir / "serf_handlers.prom"
        self.auth = auth
        self._stats_vars = {
            "stats_bind": f"127.0.0.1:{self.stats_port}",
            "stats_lua": str(METRICS_LUA),
            "stats_metrics_file": str(self.site.metrics),
            **({"stats_auth": auth} if auth else {}),
        }
        # `serve` sets the vars it needs; ours are added by overriding the entries it writes.
        self.site.handler_entries = self._entries  # type: ignore[method-assign]
        self.site.serve(procs, "runtime")
        self.site.start_agent()
        self.webs: dict[str, tuple[Agent, subprocess.Popen[bytes]]] = {}

    def _entries(self) -> list[dict[str, object]]:
        options = {k: v for k, v in self.site.options.items() if v is not None}
        options["vars"] = {**options.get("vars", {}), **self._stats_vars}
        return [{"type": "haproxy", **options}]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.stats_port}"

    def add_webs(self, *names: str) -> None:
        for name in names:
            port = free_port()
            nginx = start_nginx(self.procs, name, port, f"body-{name}")
            agent = Agent(self.procs, name, {"role": "web", "port": str(port)}, join=self.site.agent)
            self.webs[name] = (agent, nginx)

    def stop_nginx(self, name: str) -> None:
        """Stop a web node's nginx, by its PID; its serf agent stays: HAProxy's checks mark it DOWN."""
        self.procs.stop(self.webs[name][1])

    def served(self) -> set[str]:
        return set(self.site.servers())


def build_screenshot(png: Path) -> None:
    """The README's picture: three web nodes through a real load balancer, web2's nginx stopped."""
    with tempfile.TemporaryDirectory(prefix="hx-shot-", dir="/tmp") as tmp:
        procs = Processes(Path(tmp))
        try:
            lb = StatsLB(procs)
            lb.add_webs("web1", "web2", "web3")
            wait_until(lambda: lb.served() == {"web1", "web2", "web3"}, timeout=30, what="three servers")
            lb.stop_nginx("web2")
            wait_until(lambda: "DOWN" in fetch(f"{lb.url}/stats;csv")[1], timeout=15, what="web2 DOWN")
            chromium_screenshot(f"{lb.url}/stats", png)
        finally:
            procs.stop_all(together=True)
    print(f"wrote {png}")


if __name__ == "__main__":
    build_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/stats.png"))
