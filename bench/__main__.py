"""`make bench`: measure what users feel, and regenerate BENCHMARKS.md from the figures.

    python -m bench                 all nine sections (about 25 minutes on 2 cores)
    python -m bench --only 2        one section (or --only 1,3); the others are kept
    python -m bench --quick         fewer rounds, shorter runs; prints, writes nothing
    python -m bench --only 7,8 --small   sections 7 and 8 at small sizes; prints, writes nothing

Run from the repository root (the measuring is in per_event, scale, churn, convergence,
drain, tls, agents and replay, the Markdown in report.py).

Sections: 1 per-event cost, 2 scale, 3 churn under load, 4 convergence, 5 drain under load,
6 TLS termination (HTTPS against plain HTTP, certificate renewal under load), 7 real serf
agents (50, 100, 200 web nodes), 8 replayed events of 200 to 5,000 members against a real
HAProxy, 10 nginx as the load balancer (churn under wrk, per-event cost beside HAProxy's),
11 per event or `serf-handle watch` (delivery to HAProxy, a drain-query storm, CPU;
9, the Docker images, is `make bench-docker`). `--small` runs 7 and 8 at sizes a shared
machine can take while others work on it (agents 10 and 20, members 100 and 500), and
writes nothing.
It reports and never asserts a target: a missed target is a figure in the report. It
fails (exit 1) only when the benchmark itself could not run (e.g. a check that a timed
event really changed HAProxy did not hold). Every process it starts is stopped by PID.
The package is measured from a throwaway non-editable install made at the start of the
run (the editable install's import hook would add to every start-up).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from support.processes import require

from . import agents, churn, convergence, drain, nginx_lb, per_event, replay, scale, tls, watch_mode
from .procs import REPO, make_install, open_to_all, tempdir
from .report import (
    DOC,
    TITLES,
    environment,
    format_agents,
    format_churn,
    format_convergence,
    format_drain,
    format_per_event,
    format_replay,
    format_scale,
    format_tls,
    update_doc,
)

SECTIONS = ("1", "2", "3", "4", "5", "6", "7", "8", "10", "11")
TITLES["10"] = nginx_lb.TITLE  # the same dict update_doc reads
TITLES["11"] = watch_mode.TITLE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=None, metavar="N[,N]",
                        help="run only these sections (1 per-event, 2 scale, 3 churn, 4 convergence, 5 drain, 6 TLS, "
                        "7 real agents, 8 replay, 10 nginx LB, 11 per event or watch)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run; prints, does not write BENCHMARKS.md")
    parser.add_argument("--small", action="store_true",
                        help="sections 7 and 8 at small sizes (agents 10, 20; members 100, 500); writes nothing")
    parser.add_argument("--no-write", action="store_true", help="print the results, do not touch BENCHMARKS.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) for inspection")
    args = parser.parse_args(argv)
    only = sorted({s.strip() for item in (args.only or SECTIONS) for s in item.split(",") if s.strip()},
                  key=lambda s: (len(s), s))  # 10 after 8
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}: expected some of {', '.join(SECTIONS)}")
    write = not (args.quick or args.small or args.no_write)
    command = "make bench" if only == list(SECTIONS) and not (args.quick or args.small) else "python -m bench" + (
        f" --only {','.join(only)}" if only != list(SECTIONS) else "") + (" --quick" if args.quick else "") + (
        " --small" if args.small else "")
    small = args.small or args.quick  # the quick smoke run cannot afford 200 agents or 5,000 members

    require("serf", "haproxy", "nginx", "wrk", "ruby", *(["openssl"] if "6" in only else []))
    began = time.monotonic()
    root = tempdir("run")
    open_to_all(root)  # section 1 runs the throwaway install as user nobody
    failed = False
    try:
        print(f"bench: throwaway install of {REPO} in {root} ...", flush=True)
        venv_bin = make_install(root / "install")
        python = str(venv_bin / "python")
        env_line = environment(python, command)
        runners: dict[str, Callable[[Path], str]] = {
            "1": lambda d: format_per_event(per_event.run(venv_bin, d, rounds=8 if args.quick else per_event.ROUNDS)),
            "2": lambda d: format_scale(scale.run(venv_bin, d, rounds=2 if args.quick else scale.ROUNDS)),
            "3": lambda d: format_churn(churn.run(venv_bin, d, runs=1 if args.quick else churn.RUNS,
                                                  duration=8 if args.quick else churn.DURATION)),
            "4": lambda d: format_convergence(convergence.run(venv_bin, d, reps=2 if args.quick else convergence.REPS)),
            "5": lambda d: format_drain(drain.run(venv_bin, d, rounds=1 if args.quick else drain.ROUNDS)),
            "6": lambda d: format_tls(tls.run(venv_bin, d, rounds=1 if args.quick else tls.ROUNDS,
                                              duration=2 if args.quick else tls.DURATION,
                                              renewals=1 if args.quick else tls.RENEWALS)),
            "7": lambda d: format_agents(agents.run(venv_bin, d, sizes=agents.SMALL_SIZES if small else agents.SIZES,
                                                    churn_seconds=8 if args.quick else agents.CHURN_SECONDS)),
            "8": lambda d: format_replay(replay.run(venv_bin, d, rounds=1 if args.quick else replay.ROUNDS,
                                                    sizes=replay.SMALL_SIZES if small else replay.SIZES,
                                                    cpu_window=3 if args.quick else replay.CPU_SECONDS)),
            "10": lambda d: nginx_lb.format_nginx(nginx_lb.run(venv_bin, d, runs=1 if args.quick else nginx_lb.RUNS,
                                                               duration=8 if args.quick else nginx_lb.DURATION,
                                                               rounds=8 if args.quick else nginx_lb.ROUNDS)),
            "11": lambda d: watch_mode.format_watch(watch_mode.run(venv_bin, d,
                                                                   changes=10 if args.quick else watch_mode.CHANGES)),
        }
        for section in only:
            started = time.monotonic()
            print(f"bench: section {TITLES[section]} ...", flush=True)
            workdir = root / f"section{section}"
            workdir.mkdir()
            load = os.getloadavg()[0]
            try:
                body = runners[section](workdir)
            except Exception as exc:  # noqa: BLE001 - report the failure in the document too
                failed = True
                traceback.print_exc()
                body = f"**Not measured: the benchmark failed:** `{type(exc).__name__}: {exc}`\n"
            elapsed = time.monotonic() - started
            block = f"{env_line}, load average {load:.2f} at start, section took {elapsed:.0f} s.\n\n{body}"
            print(f"\n## {TITLES[section]}\n\n{block}", flush=True)
            if write:
                update_doc(section, block)
    finally:
        if args.keep:
            print(f"bench: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    total = time.monotonic() - began
    print(f"bench: done in {total:.0f} s" + (f"; {DOC.name} updated" if write else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
