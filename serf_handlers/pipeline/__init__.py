"""The pipeline under every handler that keeps a file in step with the cluster (`template`,
`file_sd`): membership → render → check → install → reload → record, written once.

- `_members`: the members a handler keeps (from events, or all of them for reconcile),
  each validated as untrusted input.
- `_record`: the handler's state file (the members, what was installed, a pending reload).
- `_plan`: what one run must do, as data: an ordered tuple of `Step`s, decided from the old
  record, the installed file and the new text. No files or processes.
- `_execute`: walks the steps; the crash-safety protocol is here, in one place.
- `_kept`: `KeptFile`, the object a handler builds on: it holds the lock for a run, reads the
  record, renders through the handler's function and runs the plan; `status`, `render`
  (`--diff`, `--write`) and `check` come with it, and `standing` (the kept members and
  whether the service has them) for a handler's query.
- `_handler`: `KeptFileHandler`, the handler contract on top of a `KeptFile`.
"""

from __future__ import annotations

from ._handler import KeptFileHandler
from ._kept import GIVEN, INSTALLED, WANTED, KeptFile, Target, state_path
from ._members import Known
from ._record import RecordError

__all__ = [
    "GIVEN", "INSTALLED", "WANTED", "KeptFile", "KeptFileHandler", "Known", "RecordError", "Target", "state_path",
]
