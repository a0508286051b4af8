"""The config file's data (serf_handlers/config.py), property-based: any YAML-like data is
accepted or a ConfigError naming the file. Config errors through the command line are in
test_cli.py."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from serf_handlers import ConfigError
from serf_handlers.config import parse_config

yaml_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=15,
)


@settings(max_examples=500, deadline=None)
@given(yaml_like | st.fixed_dictionaries({}, optional={"log": yaml_like, "handlers": yaml_like}))
def test_any_config_data_is_accepted_or_a_config_error(data: object) -> None:
    try:
        parse_config(data, "fuzz.yml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yml: ")
