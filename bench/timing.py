"""Side-by-side wall-time measurement: commands run interleaved, medians compared.

The machines are shared and noisy, so every variant runs in the same rounds, in turn,
and only medians and ratios against a baseline of the same run are reported.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple


class Command(NamedTuple):
    label: str
    argv: Sequence[str]
    stdin: bytes = b""
    env: Mapping[str, str] | None = None
    # Run untimed before each timed run (e.g. reset a file): an argv, or a Python callable.
    before: Sequence[str] | Callable[[], None] | None = None
    # Run untimed after each timed run, to check it did the work it claims (raises if not).
    after: Callable[[], None] | None = None
    # False: `env` is the whole environment (as `env -i`), nothing inherited from ours.
    inherit_env: bool = True


def measure(commands: Sequence[Command], rounds: int = 30, warmup: int = 3) -> dict[str, list[float]]:
    """Wall seconds per command, `rounds` times each, interleaved."""
    times: dict[str, list[float]] = {c.label: [] for c in commands}
    for round_number in range(warmup + rounds):
        for command in commands:
            if callable(command.before):
                command.before()
            elif command.before:
                subprocess.run(command.before, check=True, timeout=60, capture_output=True)
            env = {**os.environ, **(command.env or {})} if command.inherit_env else dict(command.env or {})
            start = time.perf_counter()
            done = subprocess.run(command.argv, input=command.stdin, env=env, capture_output=True, timeout=60)
            elapsed = time.perf_counter() - start
            if done.returncode != 0:
                raise RuntimeError(f"{command.label}: exit {done.returncode}: {done.stderr.decode()[-500:]}")
            if command.after is not None:
                command.after()
            if round_number >= warmup:
                times[command.label].append(elapsed)
    return times


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000


def quartiles_ms(samples: Sequence[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles, in ms: how noisy the median is."""
    if len(samples) < 2:
        return (median_ms(samples), median_ms(samples))
    q = statistics.quantiles(samples, n=4, method="inclusive")
    return q[0] * 1000, q[2] * 1000


def summary(times: Mapping[str, Sequence[float]], baseline: str) -> list[tuple[str, float, float, float, float, int]]:
    """(label, median ms, p25 ms, p75 ms, median / baseline median, runs) per command."""
    base = median_ms(times[baseline])
    rows = []
    for label, samples in times.items():
        med = median_ms(samples)
        low, high = quartiles_ms(samples)
        rows.append((label, med, low, high, med / base, len(samples)))
    return rows
