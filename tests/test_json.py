"""serf_handlers._json gives exactly what the `json` package gives, without importing it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serf_handlers import _json

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=_values, sort_keys=st.booleans())
def test_dumps_and_loads_agree_with_the_json_package(value: object, sort_keys: bool) -> None:
    text = _json.dumps(value, sort_keys=sort_keys)
    assert text == json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=sort_keys)
    assert _json.loads(text) == json.loads(text)
    spaced = json.dumps(value, indent=2)
    assert _json.loads(f" \n{spaced}\t\n") == json.loads(spaced)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("{", id="truncated"),
        pytest.param('{"a": 1} x', id="extra data"),
        pytest.param('{"a": 1}{}', id="two values"),
        pytest.param("{'a': 1}", id="single quotes"),
        pytest.param('["a\x00"]', id="control character"),
        pytest.param("nul", id="almost null"),
    ],
)
def test_what_is_not_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        _json.loads(text)


def test_an_unserializable_value_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        _json.dumps({"a": {1}})


def test_nan_and_infinity_read_as_json_reads_them() -> None:
    assert str(_json.loads("[NaN, Infinity, -Infinity]")) == str(json.loads("[NaN, Infinity, -Infinity]"))


def test_it_imports_neither_json_nor_re() -> None:
    # -S: without site, as an installed package sees it (the editable install's hook imports `re`).
    code = "import sys; from serf_handlers import _json; _json.loads(_json.dumps({'a': [1, 2.5, None]})); " \
           "print(sorted(m for m in ('json', 're') if m in sys.modules))"
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True, timeout=30,
                          cwd=root)
    assert done.stdout.strip() == "[]"
