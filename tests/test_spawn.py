"""serf_handlers/_spawn.py: `haproxy -c` and the reload command without the subprocess module,
with what the handler relied on from subprocess.run(stdin=DEVNULL, capture_output=True, timeout=...)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from serf_handlers import _spawn


def test_exit_code_and_both_streams_in_order() -> None:
    code, output = _spawn.run(["sh", "-c", "echo out; echo err >&2; echo out2; exit 3"], 10)
    assert (code, output) == (3, b"out\nerr\nout2\n")


def test_path_is_searched_and_argv_is_passed_as_is() -> None:
    code, output = _spawn.run(["printf", "%s|", "a b", "$(id)", "*", ""], 10)
    assert (code, output) == (0, b"a b|$(id)|*||")


def test_stdin_is_dev_null() -> None:
    assert _spawn.run(["cat"], 10) == (0, b"")


def test_a_missing_program_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _spawn.run([str(tmp_path / "no-such-haproxy"), "-c"], 10)
    with pytest.raises(FileNotFoundError):
        _spawn.run(["no-such-program-anywhere-on-path"], 10)


def test_a_program_that_cannot_run_is_an_os_error(tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(PermissionError):
        _spawn.run([str(script)], 10)


def test_killed_by_a_signal_is_minus_its_number() -> None:
    assert _spawn.run(["sh", "-c", "kill -TERM $$"], 10) == (-15, b"")


def test_sigpipe_is_back_to_its_default_in_the_child() -> None:
    # Python ignores SIGPIPE; inherited, `yes` would print "Broken pipe" errors instead of dying.
    assert _spawn.run(["sh", "-c", "yes | head -n 1"], 10) == (0, b"y\n")


def test_no_descriptor_but_0_1_2_reaches_the_program() -> None:
    read_fd, write_fd = os.pipe()  # Python's own descriptors are close-on-exec
    try:
        code, output = _spawn.run(["sh", "-c", f"ls /proc/self/fd/{read_fd} /proc/self/fd/{write_fd} 2>/dev/null"], 10)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert code != 0 and output == b"", (code, output)


@pytest.mark.parametrize("script", [
    pytest.param("exec sleep 30", id="silent"),
    pytest.param("exec >&- 2>&-; exec sleep 30", id="closed its output, still running"),
])
def test_timeout_kills_and_reaps_the_program(tmp_path: Path, script: str) -> None:
    started = time.monotonic()
    pid_file = tmp_path / "pid"
    with pytest.raises(_spawn.Timeout, match=r"no exit within 0\.5 s"):
        _spawn.run(["sh", "-c", f"echo $$ > {pid_file}; {script}"], 0.5)
    assert time.monotonic() - started < 5
    pid = int(pid_file.read_text())
    with pytest.raises(ChildProcessError):  # reaped: not a child (or zombie) of ours any more
        os.waitpid(pid, os.WNOHANG)


def test_large_output_does_not_block() -> None:
    code, output = _spawn.run([sys.executable, "-c", "import sys; sys.stdout.write('x' * 1_000_000)"], 30)
    assert (code, len(output)) == (0, 1_000_000)
