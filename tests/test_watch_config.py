"""`wait:` and `reconcile_interval:` (serf_handlers/config.py), read by `serf-handle watch`;
and the per-event path, which must not pay for watch mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serf_handlers import ConfigError
from serf_handlers.config import parse_config, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("0s", 0.0, id="zero"),
        pytest.param("500ms", 0.5, id="milliseconds"),
        pytest.param("2s", 2.0, id="seconds"),
        pytest.param("1.5s", 1.5, id="a fraction"),
        pytest.param("1m30s", 90.0, id="minutes and seconds, as Go writes them"),
        pytest.param("1h", 3600.0, id="hours"),
        pytest.param(" 2s ", 2.0, id="surrounding space"),
        pytest.param("2", None, id="no unit"),
        pytest.param("s", None, id="no number"),
        pytest.param("-1s", None, id="negative"),
        pytest.param("1.2.3s", None, id="two dots"),
        pytest.param("2 s", None, id="space inside"),
        pytest.param("2sec", None, id="unknown unit"),
        pytest.param("1e3ms", None, id="exponent"),
        pytest.param("٣s", None, id="non-ASCII digit"),
        pytest.param("", None, id="empty"),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (None if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param({}, (0.0, 0.0, 60.0), id="defaults: at once, reconcile every 60 s"),
        pytest.param({"wait": {"min": "0s", "max": "2s"}}, (0.0, 2.0, 60.0), id="the issue's example"),
        pytest.param({"wait": {"min": "500ms", "max": "2s"}}, (0.5, 2.0, 60.0), id="min and max"),
        pytest.param({"wait": {"min": "1s"}}, (1.0, 4.0, 60.0), id="max defaults to 4 x min (consul-template)"),
        pytest.param({"wait": {"max": "3s"}}, (0.0, 3.0, 60.0), id="min defaults to 0"),
        pytest.param({"wait": {"min": 0}}, (0.0, 0.0, 60.0), id="the number 0"),
        pytest.param({"wait": None, "reconcile_interval": "5m"}, (0.0, 0.0, 300.0), id="interval"),
    ],
)
def test_wait_and_reconcile_interval(data: dict[str, object], expected: tuple[float, float, float]) -> None:
    config = parse_config(data, "c.yml")
    assert (config.wait_min, config.wait_max, config.reconcile_interval) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"wait": "2s"}, "c.yml: wait: expected a mapping, got str '2s'", id="not a mapping"),
        pytest.param({"wait": {"min": "2s", "max": "1s"}},
                     "c.yml: wait.max: must not be less than wait.min (2s), got 1s", id="max below min"),
        pytest.param({"wait": {"min": 2}}, "c.yml: wait.min: expected a duration such as 500ms, 2s or 1m30s, got int 2",
                     id="a number without a unit"),
        pytest.param({"wait": {"min": "soon"}}, "c.yml: wait.min: expected a duration", id="not a duration"),
        pytest.param({"wait": {"max": True}}, "c.yml: wait.max: expected a duration", id="a boolean"),
        pytest.param({"wait": {"quiet": "1s"}}, "c.yml: wait.quiet: unknown key (expected one of max, min)",
                     id="unknown key"),
        pytest.param({"wait": {"max": "25h"}}, "c.yml: wait.max: expected at most 24h, got 90000s", id="too long"),
        pytest.param({"wait": {"min": "7h"}}, "c.yml: wait.max: expected at most 24h, got 100800s",
                     id="a default max too long"),
        pytest.param({"reconcile_interval": "0s"}, "c.yml: reconcile_interval: expected 1s to 24h, got 0s",
                     id="interval zero"),
        pytest.param({"reconcile_interval": "100ms"}, "c.yml: reconcile_interval: expected 1s to 24h, got 0.1s",
                     id="interval too short"),
        pytest.param({"reconcile_interval": 60}, "c.yml: reconcile_interval: expected a duration", id="no unit"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "c.yml")
    assert str(caught.value).startswith(message)


durations = st.none() | st.integers() | st.floats() | st.booleans() | st.text(max_size=8) | st.from_regex(
    r"\A[0-9]{1,3}(\.[0-9])?(ms|s|m|h)\Z")


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "wait": st.none() | durations | st.dictionaries(st.sampled_from(["min", "max", "x"]), durations, max_size=3),
    "reconcile_interval": durations,
}))
def test_any_wait_data_is_accepted_or_a_config_error(data: dict[str, object]) -> None:
    try:
        config = parse_config(data, "fuzz.yml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yml: ")
    else:
        assert 0 <= config.wait_min <= config.wait_max
        assert 1 <= config.reconcile_interval <= 86400


def test_the_event_path_loads_nothing_of_watch_mode(tmp_path: Path) -> None:
    """An event pays for no socket, thread, msgpack or watch package (serf-handle is started per event)."""
    path = tmp_path / "config.yml"
    path.write_text("wait: {min: 0s, max: 2s}\nreconcile_interval: 30s\n"
                    "handlers: [{type: log, events: [member-join]}]\n")
    script = (
        "import sys; from serf_handlers.cli import main; code = main(['--config', sys.argv[1]]);"
        "print(code, *(m for m in ('msgpack', 'threading', 'socket', 'serf_handlers.watch') if m in sys.modules))"
    )
    env = {"SERF_EVENT": "member-join", "SERF_HANDLERS_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    for _ in range(2):  # the first run parses the YAML; the second reads the cache
        done = subprocess.run([sys.executable, "-c", script, str(path)], input=b"web1\t10.0.0.1\tweb\t\n",
                              capture_output=True, env=env, timeout=30, check=True)
    assert done.stdout.decode().split() == ["0"]
