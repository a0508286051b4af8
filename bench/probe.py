"""Timestamp probes for the convergence benchmark, loaded by `serf-handle` as
`type: probe:start` / `type: probe:end` (bench/ on PYTHONPATH).

Each appends `LABEL EVENT TIME NODE...` (time.time(), µs precision) to $BENCH_PROBE_FILE.
Listed before and after the haproxy handler, they bracket its run inside one serf-handle
process. (The log handler stamps whole seconds only, too coarse for this.)
"""

from __future__ import annotations

import os
import time
from typing import Any


def _record(label: str, event: Any) -> None:
    now = time.time()
    names = " ".join(m.name for m in getattr(event, "members", ()))
    with open(os.environ["BENCH_PROBE_FILE"], "a", encoding="utf-8") as file:
        file.write(f"{label} {event.type} {now:.6f} {names}\n")


def start(event: Any) -> None:
    _record("start", event)


def end(event: Any) -> None:
    _record("end", event)


# The shell probe Serf runs as its own -event-handler, before serf-handle: when Serf
# delivered the event, independent of Python's start-up.
SERF_PROBE_SH = """#!/bin/sh
t=$(date +%s.%N)
names=$(cut -f1 | tr '\\n' ' ')
echo "serf $SERF_EVENT $t $names" >> "$BENCH_PROBE_FILE"
"""
