"""Side-by-side wall-time measurement: commands run interleaved, medians compared.

The machines are shared and noisy, so every variant runs in the same rounds, in turn,
and only medians and ratios against a baseline of the same run are reported.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from typing import Mapping, NamedTuple, Sequence


class Command(NamedTuple):
    label: str
    argv: Sequence[str]
    stdin: bytes = b""
    env: Mapping[str, str] | None = None
    before: Sequence[str] | None = None  # run untimed before each timed run (e.g. reset a file)


def measure(commands: Sequence[Command], rounds: int = 30, warmup: int = 3) -> dict[str, list[float]]:
    """Wall seconds per command, `rounds` times each, interleaved."""
    times: dict[str, list[float]] = {c.label: [] for c in commands}
    for round_number in range(warmup + rounds):
        for command in commands:
            if command.before:
                subprocess.run(command.before, check=True, timeout=60, capture_output=True)
            env = {**os.environ, **(command.env or {})}
            start = time.perf_counter()
            done = subprocess.run(command.argv, input=command.stdin, env=env, capture_output=True, timeout=60)
            elapsed = time.perf_counter() - start
            if done.returncode != 0:
                raise RuntimeError(f"{command.label}: exit {done.returncode}: {done.stderr.decode()[-500:]}")
            if round_number >= warmup:
                times[command.label].append(elapsed)
    return times


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000
