"""The Markdown of BENCHMARKS.md from the figures `python -m bench` measured: one `format_*`
per section, the environment line, and the update of a section's generated block (the
hand-written text around it is left alone)."""

from __future__ import annotations

import datetime
import math
import platform
import re
import statistics
import subprocess
from typing import Any

from serf_handlers.handlers.haproxy._servers import check_interval

from .procs import REPO, tool_versions

DOC = REPO / "BENCHMARKS.md"
TITLES = {
    "1": "1. Per-event cost",
    "2": "2. Scale: 100, 1,000 and 10,000 members in one event",
    "3": "3. Churn under load",
    "4": "4. Convergence",
    "5": "5. Drain, maintenance and back under load",
    "6": "6. TLS termination",
    "7": "7. Real serf agents: 50, 100 and 200 web nodes",
    "8": "8. Replayed events: 200, 1,000 and 5,000 members against a real HAProxy",
}


# --- the document ------------------------------------------------------------------------


def update_doc(section: str, block: str) -> None:
    """Replace the generated block of one section, leaving the hand-written text alone."""
    begin = f"<!-- BEGIN generated section {section} (python -m bench) -->"
    end = f"<!-- END generated section {section} -->"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    generated = f"{begin}\n{block.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: generated, text)
    else:
        text = text.rstrip() + f"\n\n## {TITLES[section]}\n\n{generated}\n"
    DOC.write_text(text)


def environment(python: str, command: str) -> str:
    versions = tool_versions(python)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "serf_handlers", "setup.cfg"],
                           capture_output=True, text=True).stdout.strip()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    haproxy = re.sub(r"HAProxy version (\S+).*", r"\1", versions["haproxy"])
    nginx = versions["nginx"].replace("nginx version: nginx/", "")
    wrk = versions["wrk"].replace("wrk ", "")
    ruby = " ".join(versions["ruby"].split()[:2])
    return (
        f"Measured {now} with `{command}`; `nproc` {nproc()}; "
        f"{platform.system()} {platform.release()}; {versions['python']}, HAProxy {haproxy}, "
        f"serf 0.9.4 (Debian's package; it prints 0.8.2-dev), nginx {nginx}, wrk {wrk}, {ruby}; "
        f"commit {commit}{' plus uncommitted changes to the package' if dirty else ''}"
    )


def nproc() -> str:
    return subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


# --- section 1 ---------------------------------------------------------------------------

# Issue 20's targets, as × `python -c pass` of the same run: (a) the log handler, in every
# environment; (b) the haproxy handler in runtime-API mode (with the metrics file too).
A_TARGET = 1.8
B_TARGET = 4.0


def format_per_event(r: dict[str, Any]) -> str:
    rows = {row[0]: row for row in r["rows"]}
    out = [
        f"Wall time of one run, median of {r['rounds']} interleaved rounds (after 3 warm-up rounds); "
        "p25–p75 shows the spread.\n",
        "| command | median ms | p25–p75 ms | × `python -c pass` |",
        "|---|---:|---:|---:|",
    ]
    for label, med, low, high, ratio, _n in r["rows"]:
        out.append(f"| {label} | {ms(med)} | {ms(low)}–{ms(high)} | {ratio:.2f}× |")
    ruby = rows["Ruby seed handler"][1]
    b, c = rows["(b) haproxy, runtime API"], rows["(c) haproxy, reload (USR2)"]
    out += ["", "The (a) rows are the log handler in the environments a handler really runs in, each given "
            "exactly this environment (nothing inherited, no `SERF_HANDLERS_CACHE_DIR`; Serf's own `/bin/sh -c` "
            "around the handler is not timed, in any row):", ""]
    for label, where, _as_nobody in r["environments"]:
        out.append(f"- {label}: {where}.")
    out.append("")
    for label, _where, as_nobody in r["environments"]:
        a = rows[label]
        # A row run through setpriv is compared with `python -c pass` run the same way.
        base = rows.get("python -c pass, as nobody") if as_nobody else None
        ratio = a[1] / base[1] if base else a[4]
        against = "`python -c pass` as nobody" if base else "`python -c pass`"
        out.append(
            f"- {label}: {ratio:.2f}× {against} (target ≤ {A_TARGET:g}×: {verdict(ratio <= A_TARGET)}); "
            f"{ruby / a[1]:.2f}× faster than the Ruby seed handler ({verdict(a[1] < ruby)})."
        )
    out += [
        f"- (b) haproxy handler, runtime API: {b[4]:.2f}× `python -c pass` "
        f"(target ≤ {B_TARGET:g}×: {verdict(b[4] <= B_TARGET)}); "
        f"{ruby / b[1]:.2f}× the Ruby seed's speed (faster than Ruby: {verdict(b[1] < ruby)}).",
        f"- (c) haproxy handler, reload mode: {c[4]:.2f}× `python -c pass` (no target); "
        f"{'faster' if c[1] < ruby else 'slower'} than the Ruby seed, which validates nothing.",
        f"- Every timed (b) join really added the server (checked with `show servers state` after each), "
        f"through the runtime API: {r['runtime_changes']} runtime-API changes, {r['runtime_reloads']} reloads. "
        f"Reload mode reloaded {r['reload_reloads']} times (one per join and per leave). "
        f"Handler errors logged: {len(r['handler_errors'])}. "
        f"A request through the runtime-API HAProxy afterwards: {r['served_after'][0]} `{r['served_after'][1]}`.",
    ]
    if r.get("metrics"):  # absent from results measured before the metrics-on rows existed
        out += ["- **Metrics on** (the config's top-level `metrics: PATH`, as the load-balancer image has it: "
                "every run also reads the file, takes its lock and rewrites it):"]
        for label, (without, counts) in r["metrics"].items():
            on, off = rows[label], rows[without]
            out.append(
                f"  - {label}: {ms(on[1])} ms against {ms(off[1])} ms without, "
                f"{on[1] - off[1]:+.1f} ms ({(on[1] / off[1] - 1) * 100:+.0f} %); {on[4]:.2f}× `python -c pass`. "
                f"The file counted {counts['joins']:.0f} member-join events ({on[5]} timed runs + 3 warm-up) and "
                f"{counts['runs_ok']:.0f} ok `handle` runs"
                + (f" (the untimed leaves included), {counts['reloads']:.0f} reloads and "
                   f"{counts['runtime_commands']:.0f} runtime-API commands" if counts["runtime_commands"] else "")
                + "."
            )
        bm = rows.get("(b) haproxy, runtime API, metrics on")
        if bm:
            out.append(f"  - (b) with metrics: target ≤ {B_TARGET:g}× `python -c pass`: {verdict(bm[4] <= B_TARGET)}; "
                       f"{r['metrics_reloads']} reloads (the site's own counter).")
    out += [
        "",
        f"**What start-up pays for** (`python -X importtime`, median of {next(iter(r['imports'].values()))['runs']} "
        "runs each; importtime itself slows imports down, so compare the shares, not the sums with the table above):",
    ]
    for label, imp in r["imports"].items():
        has = imp["has"]
        heavy = ", ".join(f"`{m}`" for m in ("jinja2", "yaml", "re", "json", "subprocess", "socket", "ipaddress",
                                               "argparse", "logging", "dataclasses") if has.get(m))
        out += [
            "",
            f"{label}: {imp['modules']} modules, {ms(imp['total_ms'])} ms of imports in total, of which "
            f"{ms(imp['package_self_ms'])} ms in serf_handlers' own modules; "
            f"also imported: {heavy or 'none of the heavy ones'}.",
            "",
            "| module | imported by | cumulative ms | self ms |",
            "|---|---|---:|---:|",
        ]
        for name, parent, self_ms, cumulative_ms in imp["top"]:
            importer = f"`{parent}`" if parent else "top level"
            out.append(f"| `{name}` | {importer} | {cumulative_ms:.1f} | {self_ms:.1f} |")
    return "\n".join(out) + "\n"


# --- section 2 ---------------------------------------------------------------------------


def format_scale(r: dict[str, Any]) -> str:
    nan = float("nan")
    rows = {row[0]: row for row in r["rows"]}
    pass_ms = rows["python -c pass"][1]
    out = [
        f"Wall time of one `serf-handle` run, median of {r['rounds']} interleaved rounds (after a warm-up); "
        f"`python -c pass` took {ms(pass_ms)} ms in the same rounds. In-process figures: the handler's own "
        "functions, timed inside one process (render: median of 6 renders after a first one).\n",
        "| members | join: ms | leave: ms | stale member-update: ms | `haproxy -c` alone: ms | render (in-process): ms "
        "| members → servers: ms | state load + dump: ms | config / state size |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    joins = {}
    for n in r["sizes"]:
        label = f"{n:,}"
        inproc = (r["inprocess"] or {}).get(str(n)) or {"render_ms": nan, "servers_ms": nan,
                                                        "state_load_ms": nan, "state_dumps_ms": nan}
        joins[n] = rows[f"join {label}"][1]
        config_bytes, state_bytes = r["bytes"][n] if n in r["bytes"] else r["bytes"][str(n)]
        out.append(
            f"| {label} | {ms(rows[f'join {label}'][1])} | {ms(rows[f'leave {label}'][1])} "
            f"| {ms(rows[f'stale update {label}'][1])} | {ms(rows[f'haproxy -c {label}'][1])} "
            f"| {inproc['render_ms']:.1f} | {inproc['servers_ms']:.1f} "
            f"| {inproc['state_load_ms'] + inproc['state_dumps_ms']:.1f} "
            f"| {config_bytes / 1024:,.0f} KiB / {state_bytes / 1024:,.0f} KiB |"
        )
    if r["inprocess"] is None:
        out.append(f"\nIn-process timings failed (the handler's private API changed?): `{r['inprocess_error']}`")
    sizes = r["sizes"]
    big, mid = sizes[-1], sizes[-2]
    big_label = f"{big:,}"
    leave_big = rows[f"leave {big_label}"][1]
    grow = (joins[big] - pass_ms) / max(joins[mid] - pass_ms, 1e-9)
    checks = {n: rows[f"haproxy -c {n:,}"][1] for n in sizes}
    grow_check = checks[big] / checks[mid]
    grow_rest = (joins[big] - checks[big] - pass_ms) / max(joins[mid] - checks[mid] - pass_ms, 1e-9)
    unchanged = r["unchanged_runs"]
    out += [
        "",
        f"- Growth, join {mid:,} → {big:,} members (×{big // mid}), time above `python -c pass`: ×{grow:.1f} "
        f"({'about linear' if 0.5 * big / mid <= grow <= 1.5 * big / mid else 'not linear'}). Of that, "
        f"`haproxy -c` alone grew ×{grow_check:.1f}, and the rest of the run (join minus `haproxy -c` alone "
        f"minus `python -c pass`) ×{grow_rest:.1f}.",
        f"- {big_label} members in one event: join {ms(joins[big])} ms, leave {ms(leave_big)} ms "
        f"(target ≤ 2 s: join {verdict(joins[big] <= 2000)}, leave {verdict(leave_big <= 2000)}); "
        f"`haproxy -c` of that config alone takes {ms(rows[f'haproxy -c {big_label}'][1])} ms of it.",
        "- Unchanged membership (the same members again as a stale member-update): checked after each of "
        + ", ".join(f"{unchanged.get(n, unchanged.get(str(n)))} runs at {n:,}" for n in sizes)
        + ": the config's and the state's inode, mtime and size were unchanged and the reload counter "
        "did not move: no write, no reload.",
    ]
    return "\n".join(out) + "\n"


# --- section 3 ---------------------------------------------------------------------------

MODE_LABELS = {
    "runtime": "runtime API (master-worker, admin socket)",
    "reload": "master-worker reload (rewrite + `kill -USR2 <master>`)",
    "naive": "naive (rewrite + `haproxy -D … -sf $(cat pid)`)",
}


def format_churn(r: dict[str, Any]) -> str:
    runs = r["runs"]
    n_runs = len(runs["runtime"])
    changes = r["info"][0]["changes"]
    out = [
        f"`wrk -t{r['threads']} -c{r['connections']} -d{r['duration']}s` through each HAProxy, {n_runs} run(s); "
        f"{len(changes)} membership changes per run (one a second: "
        + ", ".join(f"{a} {n}" for _t, a, n in changes[:4])
        + ", …), the same changes for all three load balancers at once. Counts are medians over the runs, "
        "with each run's failed-request count in brackets.\n",
        "| how a change is applied | requests | non-2xx | socket errors (connect/read/write/timeout) "
        "| failed requests | reloads | runtime-API changes | state = alive members at the end |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]

    def med(mode: str, key: str) -> float:
        return float(statistics.median(run[key] for run in runs[mode]))

    for mode, label in MODE_LABELS.items():
        failed_each = ", ".join(str(run["failed"]) for run in runs[mode])
        out.append(
            f"| {label} | {med(mode, 'requests'):,.0f} | {med(mode, 'non2xx'):,.0f} "
            f"| {med(mode, 'connect'):.0f}/{med(mode, 'read'):.0f}/{med(mode, 'write'):.0f}/{med(mode, 'timeout'):.0f} "
            f"| {med(mode, 'failed'):,.0f} [{failed_each}] | {med(mode, 'reloads'):.0f} "
            f"| {med(mode, 'runtime_changes'):.0f} | {'yes' if all(run['converged'] for run in runs[mode]) else 'NO'} |"
        )
    worst_runtime = max(run["failed"] for run in runs["runtime"])
    deferred = sum(run["deferred_deletions"] for run in runs["runtime"])
    errors = {mode: sum(run["handler_errors"] for run in runs[mode]) for mode in runs}
    out += [
        "",
        f"- Runtime-API mode: {worst_runtime} failed requests in the worst run "
        f"(target zero: {verdict(worst_runtime == 0)}); deletions deferred because connections were still open: "
        f"{deferred}.",
        "- Handler errors logged: " + ", ".join(f"{mode} {count}" for mode, count in errors.items()) + ".",
    ]
    statuses = []
    for mode in MODE_LABELS:
        bad: dict[str, int] = {}
        for run in runs[mode]:
            for code, count in run["statuses"].items():
                if not 200 <= int(code) < 400:
                    bad[str(code)] = bad.get(str(code), 0) + count
        if bad:
            statuses.append(f"{mode}: " + ", ".join(f"{count:,} × {code}" for code, count in sorted(bad.items())))
    out.append("- Non-2xx responses by status, summed over the runs: " + ("; ".join(statuses) or "none") + ".")
    down = {mode: sum(run["checks_down"] for run in runs[mode]) for mode in ("runtime", "reload")}
    out.append(
        "- Servers marked DOWN by a failed health check (HAProxy's log; the daemonized naive HAProxy has none): "
        + ", ".join(f"{mode} {count}" for mode, count in down.items()) + "."
    )
    return "\n".join(out) + "\n"


# --- section 4 ---------------------------------------------------------------------------


def format_convergence(r: dict[str, Any]) -> str:
    j, jspan, lv, lspan = r["join"], r["join_span"], r["leave"], r["leave_span"]

    def cell(med: dict[str, float], span: dict[str, tuple[float, float]], key: str) -> str:
        low, high = span[key]
        return f"{ms(med[key])} ({ms(low)}–{ms(high)})"

    out = [
        f"Runtime-API mode, {r['reps']} joins and {r['reps']} graceful leaves of one web node while a poller "
        f"sent {r['poller_requests']:,} back-to-back requests through HAProxy ({r['poller_errors']} failed). "
        "Milliseconds, median (min–max).\n",
        "| | Serf: agent started / SIGINT → event delivered | delivered → serf-handle running the handlers "
        "| haproxy handler run | **added: delivered → first / last request** | total |",
        "|---|---:|---:|---:|---:|---:|",
        f"| join | {cell(j, jspan, 'serf')} | {cell(j, jspan, 'start')} | {cell(j, jspan, 'handler')} "
        f"| **{cell(j, jspan, 'added')}** | {cell(j, jspan, 'total')} |",
        f"| leave | {cell(lv, lspan, 'serf')} | {cell(lv, lspan, 'start')} | {cell(lv, lspan, 'handler')} "
        f"| **{cell(lv, lspan, 'added')}** | {cell(lv, lspan, 'total')} |",
        "",
        f"- Added by the handler and HAProxy after Serf delivered the event (target ≤ 200 ms): join "
        f"{ms(j['added'])} ms ({verdict(j['added'] <= 200)}), leave {ms(lv['added'])} ms "
        f"({verdict(lv['added'] <= 200)}). Serf's own part: {ms(j['serf'])} ms to deliver a join and "
        f"{ms(lv['serf'])} ms a leave (its coalescing window).",
        f"- The first request reached the new node {ms(-j['served']) if j['served'] < 0 else ms(j['served'])} ms "
        f"{'before' if j['served'] < 0 else 'after'} the handler finished (it still writes its state after "
        f"HAProxy has the server). Reloads during the run: {r['reloads']}.",
    ]
    return "\n".join(out) + "\n"


# --- section 5 ---------------------------------------------------------------------------


def format_drain(r: dict[str, Any]) -> str:
    med, top, got = r["median"], r["max"], r["got"]
    out = [
        f"Runtime-API mode, {r['rounds']} rounds of `state=drain` → `state=maint` → tag deleted (ready) on "
        f"web3's own agent, while {r['rate']:.0f} requests a second (each on a fresh connection) went through "
        f"HAProxy to web1–web3. Each state was held {r['hold']:g} s.\n",
        "| change on web3 | tag change → HAProxy's live state: median ms (max) | requests web3 answered while held, "
        "per round |",
        "|---|---:|---|",
    ]
    labels = {"drain": "`serf tags -set state=drain`", "maint": "`serf tags -set state=maint`",
              "ready": "`serf tags -delete state` (ready and UP)"}
    for state, label in labels.items():
        out.append(f"| {label} | {ms(med[state])} ({ms(top[state])}) | {', '.join(str(n) for n in got[state])} |")
    out_of_rotation = sum(got["drain"]) + sum(got["maint"])
    failures = f": {r['failures']}" if r["failures"] else ""
    out += [
        "",
        f"- Failed requests: **{r['failed']}** of {r['requests']:,} (target 0: {verdict(r['failed'] == 0)}){failures}.",
        f"- Reloads: **{r['reloads']}** (target 0: {verdict(r['reloads'] == 0)}); runs that changed HAProxy "
        f"through the runtime API: {r['runtime_changes']}; handler errors logged: {r['handler_errors']}.",
        f"- Requests web3 answered while drained or in maintenance: {out_of_rotation} "
        f"(target 0: {verdict(out_of_rotation == 0)}); once ready again it served in every round: "
        f"{verdict(all(got['ready']))}. `serf-handle status` afterwards exited {r['status_exit']} "
        "(0: HAProxy equals the state).",
        "- Most of each change's time is Serf's own delivery of the `member-update` (its coalescing window, "
        "about 1 s); section 4 times the handler's part of a change.",
    ]
    return "\n".join(out) + "\n"


# --- section 6 ---------------------------------------------------------------------------


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def format_tls(r: dict[str, Any]) -> str:
    runs = r["throughput"]
    rps = {variant: _spread([float(run["rps"]) for run in runs[variant]]) for variant in ("plain", "tls")}
    out = [
        f"`wrk -t{r['threads']} -c{r['connections']} -d{r['duration']}s` (keep-alive, 2 s timeout) against the plain "
        f"HTTP bind and the HTTPS bind of the same HAProxy (runtime-API mode), to the same two nginx web nodes, "
        f"{r['rounds']} interleaved rounds (after a 1 s warm-up of each). Requests a second, median (min–max).\n",
        "| variant | requests/s | × plain | requests (all rounds) | failed: non-2xx + socket errors (all rounds) |",
        "|---|---:|---:|---:|---:|",
    ]
    labels = {"plain": "plain HTTP", "tls": "HTTPS, TLS terminated by HAProxy (keep-alive)"}
    for variant, label in labels.items():
        med, low, high = rps[variant]
        total = sum(int(run["requests"]) for run in runs[variant])
        failed = sum(int(run["failed"]) for run in runs[variant])
        out.append(f"| {label} | {med:,.0f} ({low:,.0f}–{high:,.0f}) | {med / rps['plain'][0]:.2f}× "
                   f"| {total:,} | {failed:,} |")
    ratio = rps["tls"][0] / rps["plain"][0]
    keepalive, fresh = r["renew_connections"]
    renewal = r["renewal"]
    some = next(iter(renewal.values()))
    out += [
        "",
        f"- HTTPS with keep-alive served {ratio * 100:.0f} % of plain HTTP's rate "
        f"({abs(1 - ratio) * 100:.0f} % {'fewer' if ratio < 1 else 'more'} requests a second); wrk, HAProxy and "
        "nginx share the cores, so the ratio is the figure, not the absolute rate.",
        "",
        f"**Certificate renewal under load.** Two HTTPS loads at once for {some['seconds']:g} s: `wrk -t1 "
        f"-c{keepalive}` keep-alive and `wrk -t1 -c{fresh} -H 'Connection: close'` (a new handshake per request). "
        f"{len(some['renewals'])} renewal(s), {r['renew_every']:g} s apart: a new certificate file renamed over the "
        "old one, then `serf-handle certs`; each checked by the certificate a new handshake gets.\n",
        "| load balancer | what the last `certs` printed | `certs` ran: ms, median (max) "
        "| until served: ms, median (max) | requests keep-alive / new connection "
        "| failed: non-2xx + socket errors | reloads | runtime-API certificate updates |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"runtime": "runtime API (`socket` set)", "reload": "reload fallback (no `socket`)"}
    for mode, one in renewal.items():
        ran = _spread([float(x["certs_ms"]) for x in one["renewals"]])
        served = _spread([float(x["served_ms"]) for x in one["renewals"]])
        said = one["renewals"][-1]["output"]
        loads = one["loads"]
        out.append(
            f"| {names[mode]} | `` {said} `` | {ms(ran[0])} ({ms(ran[2])}) | {ms(served[0])} ({ms(served[2])}) "
            f"| {int(loads['keepalive']['requests']):,} / {int(loads['fresh']['requests']):,} | {one['failed']} "
            f"| {one['reloads']} | {one['runtime_updates']} |"
        )
    runtime = renewal["runtime"]
    out += [
        "",
        f"- Runtime API: **{runtime['failed']}** failed requests (target 0: {verdict(runtime['failed'] == 0)}), "
        f"**{runtime['reloads']}** reloads (target 0: {verdict(runtime['reloads'] == 0)}).",
    ]
    if "reload" in renewal:
        fallback = renewal["reload"]
        out.append(f"- Reload fallback: {fallback['failed']} failed requests, {fallback['reloads']} reloads "
                   f"(one per renewal: {verdict(fallback['reloads'] == len(fallback['renewals']))}).")
    errors = ", ".join(f"{mode} {one['handler_errors']}" for mode, one in renewal.items())
    out.append(f"- Handler errors logged: {errors}.")
    return "\n".join(out) + "\n"


# --- section 7 ---------------------------------------------------------------------------


def _med_max(values: list[float], scale: float = 1.0) -> str:
    if not values:
        return "–"
    med, top = statistics.median(values) * scale, max(values) * scale
    return f"{ms(med)} ({ms(top)})" if scale == 1000 else f"{med:.2f} ({top:.2f})"


def _seconds(value: float | None, limit: float) -> str:
    return f"{value:.2f}" if value is not None else f"not within {limit:g} s"


def format_agents(r: dict[str, Any]) -> str:
    sizes = r["sizes"]
    per = {int(n): one for n, one in r["per_size"].items()}
    out = [
        f"Real `serf agent`s on loopback (Serf's default LAN timing), one nginx answering on all their ports, the "
        f"load balancer in runtime-API mode (the `lb` agent runs `serf-handle`). A light load of {r['rate']:.0f} "
        f"requests a second (each on a fresh connection) runs through HAProxy during the mass leave and the churn; "
        f"churn: {r['churn_rate']:g} changes a second for {r['churn_seconds']:g} s (a random alive agent leaves, or "
        "a departed one rejoins under its name and ports). Seconds unless marked; median (max).\n",
        "| agents | all N UP in HAProxy after the last start | haproxy handler per event: ms; events "
        "| largest event: members, ms "
        "| mass leave of N/2: HAProxy follows after | churn: change → Serf delivered | churn: change → handled "
        "| `reconcile`: ms, live = alive members | failed requests: leave / churn | reloads "
        "| load average: after start / leave / churn |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        one = per[n]
        every = one["start_runs"] + one["leave_runs"] + one["churn_runs"]
        runs = [t for t, _m in every]
        largest = max(every, key=lambda run: run[1]) if every else (0.0, 0)
        up = _seconds(one["all_up"], 120) + ("" if one["up_count"] == n else f" ({one['up_count']} of {n} UP)")
        out.append(
            f"| {n} | {up} | {_med_max(runs, 1000)}; {len(runs)} | {largest[1]}, {ms(largest[0] * 1000)} "
            f"| {_seconds(one['leave_live'], 60)} "
            f"| {_med_max(one['lags']['delivered'])} | {_med_max(one['lags']['handled'])} "
            f"| {ms(one['reconcile_s'] * 1000)}, {'yes' if one['reconcile_correct'] else 'NO'} "
            f"| {one['leave']['failed']} / {one['churn']['failed']} | {one['reloads']} "
            f"| {one['load_after_start']:.1f} / {one['load_after_leave']:.1f} / {one['load_after_churn']:.1f} |"
        )
    kinds = sorted({kind for n in sizes for kind in per[n]["serf_lines"]})
    out += [
        "",
        "**Serf's own trouble**, from every agent's log (WARN and ERR lines, by kind: lines, and agents that logged "
        "one), and what the load balancer saw:\n",
        "| agents | " + " | ".join([*kinds, "members reported failed", "changes superseded / never handled",
                                     "mass leave: events delivered to `lb`: after s (members)"]) + " |",
        "|---:|" + "---:|" * (len(kinds) + 3),
    ]
    for n in sizes:
        one = per[n]
        cells = [f"{one['serf_lines'].get(k, 0)} ({one['serf_agents'].get(k, 0)})" for k in kinds]
        events = [f"{t:.1f} ({m})" for t, m in one["leave_delivered"]]
        delivered = ", ".join(events if len(events) <= 4 else [*events[:2], "…", events[-1]]) or "–"
        delivered += f"; {len(events)} events" if len(events) > 4 else ""
        cells += [str(one["failed_members"]), f"{one['lag_superseded']} / {one['lag_missed']}", delivered]
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    for n, why in sorted(r.get("not_measured", {}).items()):
        out += ["", f"**{n} agents: not measured**: {why}"]
    failed = sum(per[n]["leave"]["failed"] + per[n]["churn"]["failed"] for n in sizes)
    reloads = sum(per[n]["reloads"] for n in sizes)
    correct = all(per[n]["reconcile_correct"] and per[n]["reconcile_exit"] == 0 for n in sizes)
    requests = sum(per[n]["leave"]["requests"] + per[n]["churn"]["requests"] for n in sizes)
    first: dict[str, str] = {}  # one example of each kind
    for n in sizes:
        for example in per[n]["serf_examples"]:
            first.setdefault(example.split(":", 1)[0], f"`{example}`")
    examples = list(first.values())
    out += [
        "",
        f"- Failed requests: **{failed}** of {requests:,} (target 0: {verdict(failed == 0)}); reloads: **{reloads}** "
        f"(target 0: {verdict(reloads == 0)}); handler errors logged: "
        + ", ".join(f"{per[n]['handler_errors']} at {n}" for n in sizes) + "; deletions deferred (connections still "
        "open): " + ", ".join(f"{per[n]['deferred_deletions']} at {n}" for n in sizes) + ".",
        f"- After the churn, `serf-handle reconcile` left HAProxy's live servers equal to the alive web members at "
        f"every size: {verdict(correct)} (alive at the end: "
        + ", ".join(f"{per[n]['alive_at_end']} of {n}" for n in sizes) + ").",
        "- Churn lag is mostly Serf's: it delivers member events in batches (a 1 s quiet period, at most 3 s), and "
        "a graceful leave first waits for its broadcast. A change superseded by the same node's next change before "
        "Serf delivered it is never delivered on its own (Serf keeps a node's latest state), so it has no lag.",
        "- A leaving agent that does not finish its leave within Serf's graceful timeout (3 s) logs \"Shutdown "
        "without a Leave\"; the others then see its leave only through failure detection, seconds later: the late "
        "entries in the mass-leave delivery column.",
    ]
    if examples:
        out.append("- Examples: " + "; ".join(examples) + ".")
    dead = {n: per[n]["died_at_start"] for n in sizes if per[n]["died_at_start"]}
    if dead:
        out.append("- Agents that exited during the start: " + "; ".join(f"{len(v)} at {n}" for n, v in dead.items())
                   + ".")
    return "\n".join(out) + "\n"


# --- section 8 ---------------------------------------------------------------------------


def _growth(n1: int, v1: float, n2: int, v2: float, to: int = 10_000) -> tuple[float, float]:
    """(exponent b of value ∝ size^b between two sizes, the value projected to `to`)."""
    if v1 <= 0 or v2 <= 0:
        return float("nan"), float("nan")
    b = math.log(v2 / v1) / math.log(n2 / n1)
    return b, v2 * (to / n2) ** b


def format_replay(r: dict[str, Any]) -> str:
    sizes = [int(n) for n in r["sizes"]]
    per = {int(n): one for n, one in r["per_size"].items()}

    def med(n: int, key: str) -> float:
        return float(statistics.median(per[n]["times"][key]))

    out = [
        f"The real `serf-handle` (one process per event, as Serf runs it) and a real HAProxy in runtime-API mode; no "
        f"Serf: each event's member lines are fed on stdin with `SERF_EVENT` set. The N members point in turn at "
        f"{r['ports']} local nginx ports, so every server is real and healthy. Median of {r['rounds']} rounds, "
        "seconds unless marked; the reconciles use a fake `serf members` listing the N members.\n",
        "| members | storm: join of N into an empty backend | mass leave of N/2 | re-join of those N/2 "
        "| small event (1–10 members): ms, median (max) | fresh reconcile (no state, HAProxy empty) "
        "| restart reconcile (no state, HAProxy has all N) | handler CPU per member in the storm: µs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        small = per[n]["times"]["small"]
        out.append(
            f"| {n:,} | {med(n, 'storm'):.2f} | {med(n, 'leave'):.2f} | {med(n, 'rejoin'):.2f} "
            f"| {ms(statistics.median(small) * 1000)} ({ms(max(small) * 1000)}) | {med(n, 'fresh'):.2f} "
            f"| {med(n, 'restart'):.2f} | {per[n]['cpu_per_member_us']:,.0f} |"
        )
    out += [
        "",
        f"With all N servers and no traffic, over {r['cpu_seconds']:g} s: the CPU of HAProxy's worker, i.e. its TCP "
        "health checks (`/proc/PID/stat`); `show servers state` and `haproxy -c` of the "
        "N-server config each timed alone (median of 3): the handler pays the first twice per change (before, and "
        "after to save HAProxy's state) and the second once. The small events and the leave and re-join ran under "
        f"{r['rate']:.0f} requests a second, each on a fresh connection.\n",
        "| members | check interval: ms | HAProxy worker: % of one core | `show servers state`: ms "
        "| `haproxy -c`: ms | failed requests | reloads | runtime-API changes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        one = per[n]
        out.append(
            f"| {n:,} | {one['check_inter_ms']:,} | {one['cpu']['haproxy']:.1f} "
            f"| {ms(one['breakdown']['show_servers_state'] * 1000)} | {ms(one['breakdown']['haproxy_c'] * 1000)} "
            f"| {one['failed']} of {one['requests']:,} | {one['reloads']} | {one['runtime_changes']} |"
        )
    failed = sum(per[n]["failed"] for n in sizes)
    reloads = sum(per[n]["reloads"] for n in sizes)
    small = sum(per[n].get("small_reloads", 0) for n in sizes)
    out += [
        "",
        f"- Failed requests during the leaves, re-joins and small events: **{failed}** (target 0: "
        f"{verdict(failed == 0)}); reloads: **{reloads}** in all (a change of more than 250 servers, the storms and "
        f"the leaves and re-joins of half at 1,000 and 5,000, is one reload by design: it costs less), of them during "
        f"the small events: **{small}** (target 0: {verdict(small == 0)}). "
        "Servers a removal left in maintenance because connections were still open (deleted by a later run), "
        "the most at any check: " + ", ".join(f"{per[n].get('deferred', 0)} at {n:,}" for n in sizes) + ".",
    ]
    out.append("- The storm through the runtime API only (`reload_above` raised so that no change reaches it), "
               "against the default (one reload above 250 servers): "
               + ", ".join(f"{n:,}: {med(n, 'storm_runtime'):.2f} s against {med(n, 'storm'):.2f} s" for n in sizes)
               + ".")
    if 1000 in per:
        worst = max(med(1000, "storm"), med(1000, "leave"))
        out.append(f"- 1,000 members in one event: join {med(1000, 'storm'):.2f} s, leave of 500 "
                   f"{med(1000, 'leave'):.2f} s (target ≤ 0.5 s: {verdict(worst <= 0.5)}).")
    if 5000 in per:
        worst = max(med(5000, "storm"), med(5000, "leave"))
        out.append(f"- 5,000 members in one event: join {med(5000, 'storm'):.2f} s, leave of 2,500 "
                   f"{med(5000, 'leave'):.2f} s (target ≤ 3 s: {verdict(worst <= 3)}); fresh reconcile "
                   f"{med(5000, 'fresh'):.2f} s (target ≤ 5 s: {verdict(med(5000, 'fresh') <= 5)}); health checks "
                   f"{per[5000]['cpu']['haproxy']:.1f} % of one core (target under ~10 %: "
                   f"{verdict(per[5000]['cpu']['haproxy'] < 10)}).")
    if len(sizes) >= 2:
        n1, n2 = sizes[0], sizes[-1]
        cpu1, cpu2 = (per[n]["cpu_per_member_us"] * n for n in (n1, n2))
        out.append(f"- Handler CPU per member includes the fixed cost of a run (start-up, one `haproxy -c`); "
                   f"each member added from {n1:,} to {n2:,} cost {(cpu2 - cpu1) / (n2 - n1):,.0f} µs more "
                   f"(storm CPU {cpu1 / 1e6:.2f} s at {n1:,}, {cpu2 / 1e6:.2f} s at {n2:,}).")
    worries = sorted({w for n in sizes for w in per[n]["worries"]})
    out.append("- Handler warnings and errors logged: " + ("; ".join(f"`{w}`" for w in worries[:5]) or "none") + ".")
    if len(sizes) >= 2:
        n1, n2 = sizes[-2], sizes[-1]
        b, storm10 = _growth(n1, med(n1, "storm"), n2, med(n2, "storm"))
        _bl, leave10 = _growth(n1, med(n1, "leave"), n2, med(n2, "leave"))
        _bf, fresh10 = _growth(n1, med(n1, "fresh"), n2, med(n2, "fresh"))
        bd1, bd2 = per[n1]["breakdown"], per[n2]["breakdown"]
        _bs, show10 = _growth(n1, bd1["show_servers_state"], n2, bd2["show_servers_state"])
        _bc, check10 = _growth(n1, bd1["haproxy_c"], n2, bd2["haproxy_c"])
        parts = {"`haproxy -c`": check10, "`show servers state` (twice)": 2 * show10}
        parts["the rest (Python: parsing, planning, rendering, the runtime batch, logging, state)"] = max(
            0.0, storm10 - sum(parts.values()))
        biggest = max(parts, key=lambda k: parts[k])
        # Health checks: N / interval checks a second; the interval stops growing at 8 s, so
        # 10,000 servers are checked 1,250 times a second.
        checks2 = n2 * 1000 / per[n2]["check_inter_ms"]
        checks10 = 10_000 * 1000 / check_interval(10_000)
        cpu10 = per[n2]["cpu"]["haproxy"] * checks10 / checks2
        out += [
            f"- **Projection to 10,000 members** (each figure fitted as ∝ N^b from {n1:,} → {n2:,}): storm "
            f"{storm10:.1f} s (b = {b:.2f}), leave of 5,000 {leave10:.1f} s, fresh reconcile {fresh10:.1f} s. "
            "Of the storm, " + ", ".join(f"{k} ≈ {v:.1f} s" for k, v in parts.items())
            + f": the next bottleneck is {biggest}. Health checks at 10,000 servers (interval "
            f"{check_interval(10_000) / 1000:g} s: {checks10:,.0f} checks a second, against {checks2:,.0f} at {n2:,}): "
            f"about {cpu10:.0f} % of one core.",
        ]
    return "\n".join(out) + "\n"
