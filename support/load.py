"""A light, bounded request load through HAProxy, in a thread, that counts failed requests.

One request per fresh connection (so every request is balanced on its own), paced at `rate`
per second, and bounded twice: at most `limit` requests and `seconds` seconds, whatever the
test does. Use it as a context manager; `failures` lists what went wrong, in order.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from support.background import Background
from support.processes import get


class Load(Background):
    def __init__(
        self, port: int, rate: float = 50.0, limit: int = 20_000, seconds: float = 300.0,
        targets: Sequence[tuple[str | None, str]] = ((None, "/"),),
    ) -> None:
        super().__init__(f"load-{port}")
        self.port = port
        self.targets = targets  # (Host header, path) of each request in turn
        self.interval = 1.0 / rate
        self.limit = limit
        self.seconds = seconds
        self.ok = 0
        self.failures: list[tuple[float, str]] = []  # (seconds since start, what)
        self.seen: Counter[str] = Counter()  # body -> requests that got it

    @property
    def requests(self) -> int:
        return self.ok + len(self.failures)

    def _run(self) -> None:
        deadline = self.started + self.seconds
        next_at = self.started
        for i in range(self.limit):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            host, path = self.targets[i % len(self.targets)]
            status, body = get(self.port, host, path=path)
            if status == 200:
                self.ok += 1
                self.seen[body] += 1
            else:
                self.failures.append((round(time.monotonic() - self.started, 2), f"{status} {body}"))
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
