from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from serf_handlers import _log
from support.processes import Processes


@pytest.fixture
def fresh_log() -> Iterator[None]:
    """The log keeps the stream it first wrote to: start and leave it unset, so that records
    of in-process runs go to the stderr pytest captures for this test."""
    _log.configure()
    yield
    _log.configure()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Processes started by a test; all stopped by PID afterwards, even on failure."""
    group = Processes(tmp_path)
    try:
        yield group
    finally:
        group.stop_all(together=True)  # all at once, no graceful leaves (see stop_all)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory for unix sockets: their paths must stay under 108 bytes, and pytest's
    tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="hx", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
