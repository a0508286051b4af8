"""The YAML configuration: find it, read it (cached), validate all of it, build the dispatcher.

Validation happens in full before any handler runs, and every message names the file,
the place (`handlers[1].role`) and the problem.

PyYAML is slow to import compared with a Python start, and Serf starts a process per
event, so the parsed file is cached (with `marshal`, see _cache.py) keyed by the file's
exact bytes: YAML is only imported when the file changed.
"""

from __future__ import annotations

from . import _cache, _log
from ._typing import TYPE_CHECKING, NamedTuple
from .dispatch import Dispatcher, validate_selector
from .errors import ConfigError
from .plugins import make_handler

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

DEFAULT_PATH = "/etc/serf-handlers/config.yml"
_LOG_KEYS = {"level", "format", "file"}
_TOP_KEYS = {"log", "handlers", "metrics", "wait", "reconcile_interval"}
_WAIT_KEYS = {"min", "max"}
DEFAULT_RECONCILE_INTERVAL = 60.0  # seconds: `serf-handle watch`'s periodic reconcile
DEFAULT_MAX_QUEUE = 1024  # `serf-handle watch --max-queue`: records queued before a collapse into one reconcile
_DEFAULT_HANDLERS: tuple[Mapping[str, object], ...] = ({"type": "log"},)


class HandlerSpec(NamedTuple):
    """One validated `handlers:` entry. `options` are the keys the handler itself takes."""

    where: str  # "handlers[1]", for messages
    type: str
    events: tuple[str, ...] | None  # None: the handler's default
    role: str | None  # None: members of every role
    options: Mapping[str, Any]


class Config(NamedTuple):
    source: str  # the file, or "(built-in default)"
    log_level: str = "info"
    log_format: str = "text"
    log_file: str | None = None
    handlers: tuple[HandlerSpec, ...] = ()
    metrics: str | None = None  # the handler's own metrics file (Prometheus text, see _metrics.py)
    # `serf-handle watch` only (a per-event run has nothing to wait for): seconds.
    wait_min: float = 0.0  # after a membership change, quiet this long before the handlers run
    wait_max: float = 0.0  # but never hold a change longer than this
    reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL


def find_config(cli_path: str | None, env: Mapping[str, str]) -> tuple[str, bool]:
    """The config path to use, and whether it was asked for (so it must exist)."""
    if cli_path:
        return cli_path, True
    if env.get("SERF_HANDLERS_CONFIG"):
        return env["SERF_HANDLERS_CONFIG"], True
    return DEFAULT_PATH, False


def load_config(path: str, required: bool, cache_dir: str | None = None) -> Config:
    """Read and validate the config file; a missing optional file means the defaults."""
    try:
        with open(path, "rb") as file:
            source = file.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: config file not found") from None
        return parse_config({}, "(built-in default)")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    return parse_config(_parse_yaml(path, source, cache_dir), path)


def parse_config(data: object, source: str) -> Config:
    """Validate already-parsed YAML data. Pure: no I/O, no imports of handlers."""
    if data is None:
        data = {}
    mapping = _mapping(data, source, "the top level")
    _no_unknown_keys(mapping, _TOP_KEYS, source, "")
    log = _mapping(mapping.get("log") or {}, source, "log")
    _no_unknown_keys(log, _LOG_KEYS, source, "log.")
    level = _string(log.get("level", "info"), source, "log.level")
    fmt = _string(log.get("format", "text"), source, "log.format")
    file = log.get("file")
    if file is not None:
        file = _string(file, source, "log.file")
    if level not in _log.LEVELS:
        raise ConfigError(f"{source}: log.level: expected one of {', '.join(_log.LEVELS)}, got {level!r}")
    if fmt not in _log.FORMATS:
        raise ConfigError(f"{source}: log.format: expected one of {', '.join(_log.FORMATS)}, got {fmt!r}")
    entries = mapping.get("handlers", _DEFAULT_HANDLERS)
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"{source}: handlers: expected a list, got {_kind(entries)}")
    specs = tuple(_handler_spec(entry, source, f"handlers[{i}]") for i, entry in enumerate(entries))
    metrics = mapping.get("metrics")
    if metrics is not None:
        metrics = _string(metrics, source, "metrics")
        if not metrics.isprintable() or metrics.endswith("/"):
            example = "/var/lib/prometheus/node-exporter/serf_handlers.prom"
            raise ConfigError(f"{source}: metrics: expected a file path (e.g. {example}), got {metrics!r}")
    wait_min, wait_max = _wait(mapping.get("wait"), source)
    interval = mapping.get("reconcile_interval")
    interval = DEFAULT_RECONCILE_INTERVAL if interval is None else _duration(interval, source, "reconcile_interval")
    if not _MIN_INTERVAL <= interval <= _MAX_DURATION:
        raise ConfigError(f"{source}: reconcile_interval: expected 1s to 24h, got {_seconds(interval)}")
    return Config(source, level, fmt, file, specs, metrics, wait_min, wait_max, interval)


_MIN_INTERVAL = 1.0
_MAX_DURATION = 86400.0
_UNITS = (("ms", 0.001), ("h", 3600.0), ("m", 60.0), ("s", 1.0))  # "ms" before "m" and "s"


def _wait(raw: object, source: str) -> tuple[float, float]:
    """consul-template's `wait: {min, max}`: a change waits until `min` passes without another
    one, but never longer than `max` (default: 4 x `min`, as consul-template's)."""
    if raw is None:
        return 0.0, 0.0
    wait = _mapping(raw, source, "wait")
    _no_unknown_keys(wait, _WAIT_KEYS, source, "wait.")
    low = _duration(wait.get("min", 0), source, "wait.min")
    high = _duration(wait["max"], source, "wait.max") if "max" in wait else 4 * low
    for key, value in (("min", low), ("max", high)):
        if value > _MAX_DURATION:
            raise ConfigError(f"{source}: wait.{key}: expected at most 24h, got {_seconds(value)}")
    if high < low:
        raise ConfigError(f"{source}: wait.max: must not be less than wait.min ({_seconds(low)}), got {_seconds(high)}")
    return low, high


def _duration(raw: object, source: str, where: str) -> float:
    """Seconds from a Go-style duration ("500ms", "2s", "1m30s"); the number 0 is also zero."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw == 0:
        return 0.0
    seconds = parse_duration(raw) if isinstance(raw, str) else None
    if seconds is None:
        raise ConfigError(f"{source}: {where}: expected a duration such as 500ms, 2s or 1m30s, got {_kind(raw)}")
    return seconds


def _seconds(value: float) -> str:
    return f"{value:g}s"


def parse_duration(text: str) -> float | None:
    """Seconds from `text`: one or more <number><unit> (ms, s, m, h), as Go writes them; None
    when it is not one. Without `re`: config.py is on the per-event path."""
    total, rest = 0.0, text.strip()
    if not rest:
        return None
    while rest:
        digits = 0
        while digits < len(rest) and (rest[digits].isdigit() or rest[digits] == "."):
            digits += 1
        number, rest = rest[:digits], rest[digits:]
        if not number.strip(".") or not number.isascii() or number.count(".") > 1:
            return None
        unit = next(((name, factor) for name, factor in _UNITS if rest.startswith(name)), None)
        if unit is None:
            return None
        total += float(number) * unit[1]
        rest = rest[len(unit[0]) :]
    return total


def build_dispatcher(config: Config) -> Dispatcher:
    """Import and create every configured handler, and register it."""
    dispatcher = Dispatcher()
    for spec in config.handlers:
        where = f"{config.source}: {spec.where} ({spec.type})"
        handler = make_handler(spec.type, spec.options, where, spec.role)
        try:
            # No `events:` means the handler's default_events; the role stays on the registration
            # even for a handler that filters members itself (see dispatch.capabilities).
            dispatcher.register(handler, *(spec.events or ()), role=spec.role, name=f"{spec.type} ({spec.where})")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return dispatcher


def _handler_spec(entry: object, source: str, where: str) -> HandlerSpec:
    entry = _mapping(entry, source, where)
    if "type" not in entry:
        raise ConfigError(f"{source}: {where}.type: missing (a built-in name, module:attr, or a plugin name)")
    kind = _string(entry["type"], source, f"{where}.type")
    events = None
    if "events" in entry:
        raw = entry["events"]
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{source}: {where}.events: expected a non-empty list of event selectors")
        try:
            events = tuple(validate_selector(_string(e, source, f"{where}.events")) for e in raw)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {where}.events: {exc}") from None
    role = entry.get("role")
    if role is not None:
        role = _string(role, source, f"{where}.role")
    options = {k: v for k, v in entry.items() if k not in ("type", "events", "role")}
    for key in options:
        if not isinstance(key, str):
            raise ConfigError(f"{source}: {where}: option names must be strings, got {key!r}")
    return HandlerSpec(where, kind, events, role, options)


def _parse_yaml(path: str, source: bytes, cache_dir: str | None) -> object:
    cached = _cache.read(cache_dir, path, source) if cache_dir else None
    if cached is not None:
        return cached[0]
    import yaml

    try:
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        place = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: {place}invalid YAML: {problem}".replace("\n", " ")) from None
    if cache_dir:
        _cache.write(cache_dir, path, source, data)
    return data


def _mapping(value: object, source: str, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {_kind(value)}")
    return value


def _string(value: object, source: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: {where}: expected a non-empty string, got {_kind(value)}")
    return value


def _no_unknown_keys(mapping: Mapping[Any, Any], allowed: set[str], source: str, prefix: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{source}: {prefix}{key}: unknown key (expected one of {', '.join(sorted(allowed))})")


def _kind(value: object) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
