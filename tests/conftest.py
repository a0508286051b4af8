from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.harness import Processes


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Processes started by a test; all stopped by PID afterwards, even on failure."""
    group = Processes(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
