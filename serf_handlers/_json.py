"""JSON for the per-event path: the state files and JSON log lines, without importing `json`.

`import json` costs a Serf event about 8 ms here (BENCHMARKS.md, section 1: its decoder
imports `re`, which imports `enum`, `functools` and more), a sixth of a whole haproxy
handler run. The work itself is done by `json`'s own C accelerator, `_json`, called the way
`json.scanner` and `json.encoder` call it; only the few lines of glue are ours. Where `_json`
is missing (not CPython), the `json` package is used. tests/test_json.py checks both give the
same results.
"""

from __future__ import annotations

from ._typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

_WHITESPACE = " \t\n\r"


class _Context:
    """What `_json.make_scanner` reads from a `json.JSONDecoder`: the stdlib's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__

    def __init__(self) -> None:
        self.memo: dict[str, str] = {}


def loads(text: str) -> object:
    """Like `json.loads(text)`, errors included (json's JSONDecodeError, a ValueError)."""
    try:
        import _json
    except ImportError:
        return _stdlib_loads(text)
    scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # it reads a decoder's attributes
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = scan(text, start)
    except (StopIteration, ValueError, SystemError):
        # Not JSON. The C scanner raises its errors through `json.decoder`, and without it
        # imported CPython 3.11's raises SystemError instead: `json` says what is wrong.
        return _stdlib_loads(text)
    if text[end:].strip(_WHITESPACE):
        return _stdlib_loads(text)  # extra data: the same
    return value


def _stdlib_loads(text: str) -> object:
    import json

    return json.loads(text)


def dumps(value: object, sort_keys: bool = False) -> str:
    """Like `json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=sort_keys)`."""
    try:
        from _json import encode_basestring_ascii, make_encoder
    except ImportError:
        import json

        return json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=sort_keys)
    encode: Callable[[object, int], list[str]] = make_encoder(
        {}, _unserializable, encode_basestring_ascii, None, ":", ",", sort_keys, False, True
    )
    return "".join(encode(value, 0))


def _unserializable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
