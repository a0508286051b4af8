"""The handler's own metrics, kept in a file: one `serf-handle` process per event holds nothing.

Handlers and the dispatcher record into this process's accumulator (`inc`, `gauge`,
`family`: a dict update, nothing else). At the end of a run, and only when the config's
top-level `metrics: PATH` is set, the CLI calls `flush`: under the package's lock
(`PATH.lock`, `_files.Lock`), it reads the file back, adds this run's counters to the ones
there, replaces the gauges this run set, and rewrites the file with the package's atomic
writer (`_files.write_atomic`: a temporary dot file next to it, fsync, rename) in the
Prometheus text format: node_exporter's textfile-collector convention. So counters survive
across runs, never go backwards (unless the file is deleted: then they start again from
zero, which Prometheus reads as a counter reset), and concurrent runs lose no increment.
`serf-handle metrics` prints the file.

Cheap on purpose (it is on the event path, see _typing.py): no `re`, no `typing`; the file
is parsed by splitting lines, as only this module writes it. A sample's key is its label
text exactly as written (`{type="member-join"}`), so merging needs no label parser.
"""

from __future__ import annotations

from ._typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from .handlers.haproxy._servers import Server

    Samples = dict[str, float]  # label text ("" or '{k="v",...}') -> value

P = "serf_handlers_"
EVENT_TYPES = ("member-join", "member-leave", "member-failed", "member-update", "member-reap", "user", "query")
SERVER_STATES = ("ready", "drain", "maint")

# Every family this module writes, in the file's order: name -> (type, help).
FAMILIES: dict[str, tuple[str, str]] = {
    P + "events_total": ("counter", "Serf events handled, by type (member-join, ..., user, query)."),
    P + "handler_failures_total": ("counter", "Events or reconciles a handler failed on, by handler."),
    P + "runs_total": ("counter", "serf-handle runs, by command and result (ok, failed, bad_input)."),
    P + "run_seconds_total": ("counter", "Seconds spent in serf-handle runs after start-up, by command."),
    P + "last_run_timestamp_seconds": ("gauge", "When the last run of each command ended (Unix time)."),
    P + "last_success_timestamp_seconds": ("gauge", "When the last run of each command that exited 0 ended."),
    P + "last_run_duration_seconds": ("gauge", "How long the last run of each command took, after start-up."),
    P + "last_run_exit_code": ("gauge", "The exit code of each command's last run (0 ok, 1 failed, 2 bad input)."),
    P + "haproxy_reloads_total": ("counter", "HAProxy reloads the haproxy handler ran (its `reload` argv)."),
    P + "haproxy_reload_failures_total": ("counter", "HAProxy reloads that failed or timed out."),
    P + "haproxy_backend_reloads_total": ("counter", "Of the reloads, those because a backend was added or removed."),
    P + "haproxy_route_updates_total": ("counter", "HAProxy maps replaced live because the routes changed or drifted."),
    P + "haproxy_route_update_failures_total": ("counter", "Live map replacements that failed (the next run retries)."),
    P + "haproxy_runtime_commands_total": ("counter", "Commands sent to HAProxy's runtime API (admin socket)."),
    P + "haproxy_skipped_members_total": ("counter", "Members skipped with an error (invalid, or HAProxy said no)."),
    P + "haproxy_servers": ("gauge", "Servers HAProxy has after the last change, by backend and state."),
    P + "haproxy_failed_servers_kept": ("gauge", "Failed members kept by the partition rule (min_alive), by backend."),
    P + "haproxy_skipped_members": ("gauge", "Members not served now because they cannot be."),
    P + "haproxy_install_failures_total": (
        "counter", "Runs whose config could not be installed for no member's fault (template, certificate, disk).",
    ),
    P + "haproxy_config_behind": (
        "gauge", "1 while the installed config file is behind HAProxy's live servers (see serf-handle status).",
    ),
    P + "tls_certificate_expiry_timestamp_seconds": ("gauge", "Each TLS certificate file's notAfter (Unix time)."),
}
# Counters written even before anything happened, so that rate() and increase() see them from zero.
_ZERO = {
    P + "events_total": tuple(f'{{type="{kind}"}}' for kind in EVENT_TYPES),
    P + "haproxy_reloads_total": ("",),
    P + "haproxy_reload_failures_total": ("",),
    P + "haproxy_backend_reloads_total": ("",),
    P + "haproxy_route_updates_total": ("",),
    P + "haproxy_route_update_failures_total": ("",),
    P + "haproxy_runtime_commands_total": ("",),
    P + "haproxy_skipped_members_total": ("",),
    P + "haproxy_install_failures_total": ("",),
}
LOCK_TIMEOUT = 10.0  # seconds; the lock is held only to read and rewrite one small file

# This process's records, until `flush`.
_counters: dict[str, Samples] = {}
_gauges: dict[str, Samples] = {}
_whole: set[str] = set()  # gauge families this run set in full (`family`): their old samples go


def labels(**values: object) -> str:
    """The label text of a sample, escaped as the text format wants."""
    if not values:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in values.items()) + "}"


def inc(name: str, by: float = 1, **label_values: object) -> None:
    """Add `by` to a counter of this run (`by` 0 makes the sample exist)."""
    samples = _counters.setdefault(name, {})
    key = labels(**label_values)
    samples[key] = samples.get(key, 0) + by


def gauge(name: str, value: float, **label_values: object) -> None:
    """Set one gauge sample; the file's other samples of that family stay."""
    _gauges.setdefault(name, {})[labels(**label_values)] = value


def family(name: str, samples: Mapping[str, float]) -> None:
    """Set a gauge family in full (label text -> value): samples not given disappear."""
    _gauges[name] = dict(samples)
    _whole.add(name)


def haproxy_servers(servers: Iterable[Server], skipped: int, default_backend: str) -> None:
    """The haproxy handler's gauges, from the servers HAProxy now has."""
    counts: dict[str, float] = {}
    kept: dict[str, float] = {}
    backends = {default_backend}
    for server in servers:
        backends.add(server.backend)
        key = labels(backend=server.backend, state=server.admin)  # ready, drain or maint
        counts[key] = counts.get(key, 0) + 1
        if server.failed:
            key = labels(backend=server.backend)
            kept[key] = kept.get(key, 0) + 1
    for backend in backends:
        for state in SERVER_STATES:
            counts.setdefault(labels(backend=backend, state=state), 0)
        kept.setdefault(labels(backend=backend), 0)
    family(P + "haproxy_servers", counts)
    family(P + "haproxy_failed_servers_kept", kept)
    family(P + "haproxy_skipped_members", {"": skipped})


def newly_skipped(old: Mapping[str, tuple[str, str]], new: Mapping[str, tuple[str, str]]) -> int:
    """How many members `new` skips for a reason not already reported in `old` (the ones logged)."""
    return sum(1 for node, (seen, _) in new.items() if old.get(node, ("", ""))[0] != seen)


def run_finished(command: str, exit_code: int, seconds: float, now: float, handlers: Iterable[str] = ()) -> None:
    """Record one run of `command`; `handlers` are the configured handlers' names."""
    result = {0: "ok", 1: "failed"}.get(exit_code, "bad_input")
    inc(P + "runs_total", command=command, result=result)
    inc(P + "run_seconds_total", seconds, command=command)
    gauge(P + "last_run_timestamp_seconds", now, command=command)
    gauge(P + "last_run_duration_seconds", seconds, command=command)
    gauge(P + "last_run_exit_code", exit_code, command=command)
    if exit_code == 0:
        gauge(P + "last_success_timestamp_seconds", now, command=command)
    for name in handlers:
        inc(P + "handler_failures_total", 0, handler=name)


def flush(path: str) -> None:
    """Merge this run's records into the file at `path` and rewrite it atomically.
    Raises OSError, or HandlerError when another run holds the lock too long."""
    from ._files import Lock, write_atomic

    with Lock(f"{path}.lock", LOCK_TIMEOUT, make_dirs=False):
        counters, gauges = parse(_read(path))
        for name, samples in _counters.items():
            into = counters.setdefault(name, {})
            for key, value in samples.items():
                into[key] = into.get(key, 0) + value
        for name, samples in _gauges.items():
            if name in _whole:
                gauges[name] = dict(samples)
            else:
                gauges.setdefault(name, {}).update(samples)
        # 0644: readable by the collector and HAProxy's workers, whatever the umask. The
        # temporary name is a dot file ending in .tmp: the collector reads only *.prom.
        write_atomic(path, render(counters, gauges).encode("utf-8"), 0o644)
        _counters.clear()
        _gauges.clear()
        _whole.clear()


def text(path: str) -> str:
    """What `serf-handle metrics` prints: the file, or what a first run starts from."""
    data = _read(path)
    return data if data else render({}, {})


def render(counters: Mapping[str, Samples], gauges: Mapping[str, Samples]) -> str:
    lines: list[str] = []
    for name, (kind, help) in FAMILIES.items():
        samples = dict(counters.get(name) or gauges.get(name) or {})
        for key in _ZERO.get(name, ()):
            samples.setdefault(key, 0)
        if not samples:
            continue
        lines.append(f"# HELP {name} {help}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{key} {_number(value)}" for key, value in sorted(samples.items()))
    return "\n".join(lines) + "\n"


def parse(data: str) -> tuple[dict[str, Samples], dict[str, Samples]]:
    """(counters, gauges) from a file `render` wrote; lines of unknown families are dropped."""
    counters: dict[str, Samples] = {}
    gauges: dict[str, Samples] = {}
    for line in data.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, brace, rest = series.partition("{")
        known = FAMILIES.get(name)
        if known is None:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        into = counters if known[0] == "counter" else gauges
        into.setdefault(name, {})[brace + rest] = number
    return counters, gauges


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except FileNotFoundError:
        return ""


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
