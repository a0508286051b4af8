"""Section 11: where a watch-mode change spends its time, from `watch_probe.py`'s stamps.

Each timed change is one window of the stamps file: from the first `window` stamp after the
change's `serf tags` command to the `dispatch.done` that follows. The `received` stamp
before that window is the watcher's own RPC reader queueing the record; the end is the
benchmark's first `show servers state` poll that showed the new weight (`live`).
"""

from __future__ import annotations

import statistics
from pathlib import Path

# (label of the step, the stamp it starts at, the stamp it ends at); `live` is the HAProxy poll.
# UNCHECKED is the install when it runs no `haproxy -c` (a change of weights and states
# alone, _plan.only_weights_and_states): the three rows before it are then empty.
UNCHECKED = "config written and renamed into place, no `haproxy -c` (weights and states only)"
STEPS = (  # contiguous: each starts where the one before ends (one of the two installs)
    ("stream record queued → the loop applies the window", "received", "window"),
    ("→ the haproxy handler holds the state lock", "window", "lock.done"),
    ("→ admin-socket session opened", "lock.done", "live"),
    ("`show servers state` read", "live", "live.done"),
    ("state file loaded", "live.done", "plan"),
    ("plan made, config rendered", "plan", "plan.done"),
    ("→ install starts", "plan.done", "install"),
    ("candidate written", "install", "check"),
    ("`haproxy -c` on the candidate", "check", "check.done"),
    ("renamed into place", "check.done", "install.done"),
    (UNCHECKED, "install", "install.done"),
    ("→ runtime API commands start", "install.done", "apply"),
    ("runtime API commands (`set weight`)", "apply", "apply.done"),
    ("→ the benchmark's 2 ms poll sees it", "apply.done", "live_seen"),
)
TOTAL = "stream record queued → HAProxy's change seen (the sum)"
AFTER = (  # what the run still does once HAProxy has changed
    ("server-state file rewritten (reads `show servers state` again)", "server_state", "server_state.done"),
    ("state file saved", "state_save", "state_save.done"),
    ("whole dispatch, start to end", "dispatch", "dispatch.done"),
)


def read(path: Path) -> list[tuple[float, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        stamp, _, label = line.partition(" ")
        out.append((float(stamp), label))
    return out


def one_change(stamps: list[tuple[float, str]], began: float, live: float) -> dict[str, float] | None:
    """The stamps of the change commanded at `began` and seen live at `live`: label -> time."""
    window = next((i for i, (t, label) in enumerate(stamps) if t >= began and label == "window"), None)
    if window is None:
        return None
    found: dict[str, float] = {"live_seen": live}
    received = [t for t, label in stamps[:window] if label == "received" and t >= began]
    if received:
        found["received"] = received[-1]
    for t, label in stamps[window:]:
        found.setdefault(label, t)
        if label == "dispatch.done":
            break
    return found


def breakdown(stamps: list[tuple[float, str]], changes: list[tuple[float, float]]) -> dict[str, list[float]]:
    """Per step, the milliseconds of each change that has both ends."""
    out: dict[str, list[float]] = {name: [] for name, _a, _b in STEPS}
    out[TOTAL] = []
    out.update({name: [] for name, _a, _b in AFTER})
    for began, live in changes:
        found = one_change(stamps, began, live)
        if found is None:
            continue
        for name, start, end in (*STEPS, *AFTER):
            if name == UNCHECKED and "check" in found:
                continue  # the checked install's three rows hold it
            if start in found and end in found:
                out[name].append((found[end] - found[start]) * 1000)
        if "received" in found:
            out[TOTAL].append((live - found["received"]) * 1000)
    return out


def format_breakdown(parts: dict[str, list[float]]) -> list[str]:
    total = parts[TOTAL]
    rows = [
        "| step (watch mode) | median ms | p95 ms | changes |",
        "|---|---:|---:|---:|",
    ]
    for name, values in parts.items():
        if not values:
            rows.append(f"| {name} | - | - | 0 |")
            continue
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        bold = "**" if name == "`haproxy -c` on the candidate" or values is total else ""
        rows.append(f"| {bold}{name}{bold} | {statistics.median(values):.1f} | {p95:.1f} | {len(values)} |")
    return rows
