"""A loop in a daemon thread, as a context manager: the load, the HAProxy watchers and the
request streams of the tests are each one. `_run` loops until `_stop` is set (it waits on
`_stop`, so it ends at once); leaving the `with` block stops it, waiting at most `join_timeout` s."""

from __future__ import annotations

import threading
import time
from typing import Self


class Background:
    def __init__(self, name: str, join_timeout: float = 10.0) -> None:
        self.started = 0.0  # time.monotonic() when it started
        self.join_timeout = join_timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.join_timeout)

    def _run(self) -> None:
        raise NotImplementedError
