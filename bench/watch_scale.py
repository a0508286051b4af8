"""Section 11: the watcher's memory and its full reconcile with 5,000 members.

Real serf agents cannot reach 5,000 on this machine (section 7: 200 overloaded it), so the
members come from a stand-in RPC server (`fake_serf.FakeSerf`) that answers `members` with
5,000 alive members of role `web` (distinct 127/8 addresses, a `port` tag where nothing
listens) and then streams member events. Everything else is real: the throwaway install's
`serf-handle watch` process, its haproxy handler in runtime-API mode, and HAProxy on
loopback (`Site.serve(procs, "runtime")`), which must end up with exactly those servers.

Measured: the time from the server receiving `members` to the watcher's "connected ...
reconciled N alive member(s)" line (polled every 10 ms), and `/proc/PID/status` VmRSS after
that reconcile, after the streamed events, and VmHWM (the peak) at the end. A run with 10
members first gives the baseline.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from support.admin import live_servers
from support.processes import Processes, free_port, wait_until
from support.site import Site

from .fake_serf import FakeSerf, loopback_addr, member

SIZES = (10, 5000)
UPDATES = 20  # member-update records streamed after the reconcile, each of BATCH members
BATCH = 50


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of `pid`, MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def one(venv_bin: Path, workdir: Path, size: int) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    procs = Processes(workdir)
    port = str(free_port())  # nothing listens there: HAProxy's checks fail fast, on loopback
    members = [member(f"web{i}", loopback_addr(i), {"role": "web", "port": port}) for i in range(size)]
    fake = FakeSerf(members)
    try:
        log = {"level": "info", "format": "json", "file": str(workdir / "handler.jsonl")}
        site = Site(workdir, serf_handle=str(venv_bin / "serf-handle"), log=log)
        site.serve(procs, "runtime")
        argv = [site.serf_handle, "--config", str(site.yml), "watch", "--rpc-addr", fake.addr]
        started = time.monotonic()
        watch = procs.start("watch", argv, env=site.env(None))
        wait_until(lambda: any("connected to the serf agent" in str(r.get("message")) for r in site.records()),
                   timeout=300, interval=0.01, what=f"the watcher's reconcile of {size} members")
        connected = time.monotonic()
        wait_until(lambda: len(live_servers(site.admin_socket)) == size, timeout=120, interval=0.1,
                   what=f"{size} servers live in HAProxy")
        after_reconcile = memory(watch.pid)
        sent = _stream(fake, site, members)
        after_events = memory(watch.pid)
        return {"size": size, "reconcile": connected - fake.members_asked[0], "start_to_connected": connected - started,
                "rss_reconcile": after_reconcile["VmRSS"], "rss_events": after_events["VmRSS"],
                "hwm": after_events["VmHWM"], "events": sent}
    finally:
        fake.stop()
        procs.stop_all(together=True)


def _stream(fake: FakeSerf, site: Site, members: list[dict[str, object]]) -> int:
    """UPDATES member-update records (weight 7 for BATCH members each); returns once HAProxy
    has every one of those weights. How many records were sent."""
    changed = min(len(members), UPDATES * BATCH)
    updated = [{**m, "Tags": {**m["Tags"], "weight": "7"}} for m in members[:changed]]  # type: ignore[dict-item]
    now: list[Mapping[str, object]] = [*updated, *members[changed:]]
    fake.members = now  # what a later reconcile reads
    records = 0
    for start in range(0, changed, BATCH):
        records += fake.emit({"Event": "member-update", "Members": updated[start:start + BATCH]})
    names = {str(m["Name"]) for m in updated}

    def applied() -> bool:
        live = live_servers(site.admin_socket)
        return all(live.get(name, ("", "", ""))[2] == "7" for name in names)

    wait_until(applied, timeout=120, interval=0.1, what=f"{changed} weights live in HAProxy")
    return records


def run(venv_bin: Path, workdir: Path, sizes: tuple[int, ...] = SIZES) -> list[dict[str, Any]]:
    return [one(venv_bin, workdir / f"members{size}", size) for size in sizes]


def format_scale(results: list[dict[str, Any]]) -> list[str]:
    out = ["**The watcher's memory with 5,000 members.** The members come from a stand-in RPC server "
           "(`bench/fake_serf.py`), not from real agents: about 200 real serf agents are the most this 2-core "
           "machine holds (section 7). It speaks Serf's RPC as ../shared/SERF_RPC.md describes it, with member "
           "maps shaped as the real agent's (checked against Debian's serf for two agents), and answers `members` "
           "with N alive members of role `web` (127/8 addresses); the watcher, its haproxy handler (runtime API) and "
           "HAProxy are real. Reconcile: from the server receiving `members` to the watcher's \"connected ... "
           f"reconciled N\" line (HAProxy then had all N servers). Then {UPDATES} member-update records of {BATCH} "
           "members each (weight 7) were streamed and applied.\n",
           "| members | full reconcile s | RSS after it, MiB | RSS after the events, MiB | peak (VmHWM), MiB |",
           "|---:|---:|---:|---:|---:|"]
    for r in results:
        out.append(f"| {r['size']:,} | {r['reconcile']:.2f} | {r['rss_reconcile']:.1f} | {r['rss_events']:.1f} "
                   f"| {r['hwm']:.1f} |")
    return out
