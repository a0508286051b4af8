from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from support.processes import Processes


@pytest.fixture
def short_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Processes in a short directory (an admin socket's path must stay under 108 bytes);
    every one stopped by PID afterwards, frozen (SIGSTOP) ones continued first."""
    group = Processes(tmp_path_factory.mktemp("hx"))
    try:
        yield group
    finally:
        for proc in group.started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
        group.stop_all(together=True)
