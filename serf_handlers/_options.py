"""Handler options from one declarative table: each `Option` has a name, a kind (which says
how it is checked), a default, whether it is required, and optionally its own check (which
raises a ConfigError naming the option, or a ValueError). `parse` checks a config entry's
options against a table and returns them complete; a ConfigError names the bad one.
Defaults are taken as they are, not checked.
"""

from __future__ import annotations

from ._typing import TYPE_CHECKING, NamedTuple
from .errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence


class Option(NamedTuple):
    name: str
    kind: str  # a key of KINDS
    default: object = None
    required: bool = False
    check: Callable[[object], object] | None = None  # instead of the kind's check


def _path(value: object) -> object:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ValueError("expected an absolute path")
    return value


def _argv(value: object) -> object:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
        raise ValueError("expected a command as a list of strings (argv, never a shell string), or null")
    return tuple(value)


def _bool(value: object) -> object:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _mode(value: object) -> object:
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value, 8)  # "0640", as in chmod
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise ValueError("expected a file mode such as \"0640\"")
    return value


def _text(value: object) -> object:
    if value is None:
        return None
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ValueError("expected a non-empty string")
    return value


def _port(value: object) -> object:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ValueError("expected a port number, 1-65535")
    return value


def _int(value: object) -> object:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("expected a whole number")
    return value


def _fraction(value: object) -> object:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError("expected a fraction from 0 to 1")
    return float(value)


def _names(value: object) -> object:
    if not isinstance(value, list) or not all(isinstance(n, str) and n and n.isprintable() for n in value):
        raise ValueError("expected a list of names")
    return tuple(value)


def _query(value: object) -> object:
    # Serf's `-event-handler` filter is `query:NAME`, comma-separated: a name is one word.
    if not isinstance(value, str) or not value or not value.isprintable() or any(
        c.isspace() or c in "\"'#\\," for c in value
    ):
        raise ValueError("expected a query name (no spaces or commas)")
    return value


def _mapping(value: object) -> object:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError("expected a mapping with string keys")
    return dict(value)


KINDS: dict[str, Callable[[object], object]] = {
    "path": _path, "argv": _argv, "bool": _bool, "mode": _mode, "text": _text, "port": _port,
    "int": _int, "fraction": _fraction, "names": _names, "mapping": _mapping, "query": _query,
}


def parse(table: Sequence[Option], options: Mapping[str, object]) -> dict[str, object]:
    """`options` checked against `table`, with the defaults filled in."""
    known = {option.name for option in table}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: unknown option(s) (expected {', '.join(sorted(known))})")
    parsed: dict[str, object] = {}
    for option in table:
        if option.name not in options:
            if option.required:
                raise ConfigError(f"{option.name}: required")
            parsed[option.name] = option.default
            continue
        check = option.check or KINDS[option.kind]
        try:
            parsed[option.name] = check(options[option.name])
        except ValueError as exc:
            raise ConfigError(f"{option.name}: {exc}, got {options[option.name]!r}") from None
    return parsed
