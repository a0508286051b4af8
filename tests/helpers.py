"""What the tests of the kept-file handlers (template, nginx, file_sd) share about a failed
`serf-handle` run: its stderr is one-line records and one summary line, never a traceback."""

from __future__ import annotations

import re
import subprocess
from typing import Any

from support.site import stderr_lines

RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\S+ (INFO|WARNING|ERROR) ")


def the_error(done: subprocess.CompletedProcess[Any], handler: str, code: int = 1) -> str:
    """The one error of a failed run.

    Exit 2 (bad input or configuration, nothing ran): stderr is exactly one
    `serf-handle: error:` line, returned. Exit 1: one-line records, then the one summary
    line naming `handler` (as `serf-handle` names it: `template (handlers[0])`); returns the
    handler's own ERROR record.
    """
    lines = stderr_lines(done)
    assert done.returncode == code, lines
    assert "Traceback" not in "\n".join(lines)
    errors = [line for line in lines if line.startswith("serf-handle: error: ")]
    assert len(errors) == 1, lines
    if code == 2:
        assert lines == errors, lines
        return errors[0]
    assert lines[-1] == errors[0] and lines[-1].startswith(f"serf-handle: error: handler {handler} failed: "), lines
    assert all(RECORD.match(line) for line in lines[:-1]), lines  # every record is one line
    (failed,) = [line for line in lines if f" ERROR handler {handler} failed: " in line]
    return failed
