"""What the benchmarks need beyond support/ (real processes shared with the tests and the
demo): a throwaway install of the package, process groups stopped all at once, tuned nginx,
tool versions.

Every process is started through a `support.processes.Processes` group, which stops exactly
the PIDs it started (daemonized haproxy through its pidfile), in the caller's `finally`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from support.processes import Processes, start_nginx

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
ASSETS = BENCH / "assets"  # what is not Python: the Ruby seed handler, the wrk script, the Docker script


@contextmanager
def processes(workdir: Path) -> Iterator[Processes]:
    """A group of processes for one benchmark: on the way out, all stopped at once, by PID."""
    procs = Processes(workdir)
    try:
        yield procs
    finally:
        procs.stop_all(together=True)


def start_web(procs: Processes, name: str, port: int) -> subprocess.Popen[bytes]:
    """nginx answering `name`, with room for wrk's connections through every HAProxy."""
    return start_nginx(procs, name, port, worker_connections=4096, keepalive_requests=1_000_000)


def make_install(workdir: Path) -> Path:
    """A throwaway, non-editable venv with the package; returns its bin/ directory.

    The editable install's import finder adds imports to every start, so start-up is
    measured on a regular install. The source is copied first, without build/ and
    caches, so a stale build directory in the repo cannot leak old modules in.
    """
    source = workdir / "src"
    top_level = {".venv", "build", "dist", ".git", ".hypothesis", "docker", "tests", "bench", "demo", "support"}

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__" or n.endswith((".egg-info", "_cache"))}
        if Path(directory) == REPO:
            skipped |= top_level & set(names)
        return skipped

    shutil.copytree(REPO, source, ignore=ignore)
    venv = workdir / "venv"
    base = _base_python()
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(source)],
        check=True, timeout=300, capture_output=True,
    )
    return venv / "bin"


def open_to_all(path: Path) -> None:
    """Let every user reach `path` (a temp dir is 0700): section 1 runs the install as `nobody`."""
    path.chmod(0o755)


def _base_python() -> str:
    """The interpreter behind this venv (so the throwaway venv runs the same Python)."""
    return getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"


def tool_versions(python: str) -> dict[str, str]:
    def first_line(argv: Sequence[str]) -> str:
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
        except OSError:
            return "(not installed)"
        return ((done.stdout or "") + (done.stderr or "")).strip().splitlines()[0]

    versions = {
        "python": first_line([python, "--version"]),
        "serf": first_line(["serf", "version"]) + " (Debian package)",
        "haproxy": first_line(["haproxy", "-v"]),
        "nginx": first_line(["nginx", "-v"]),
        "wrk": first_line(["wrk", "-v"]).split(" Copyright")[0],
        "ruby": first_line(["ruby", "-v"]),
    }
    return versions


def tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"serf-bench-{prefix}-"))
