"""The built-in template's stats frontend (`vars.stats_*`): both renderers agree byte for byte,
`haproxy -c` accepts every combination, and bad values are refused without echoing a password."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from serf_handlers.errors import ConfigError
from serf_handlers.events import Member
from serf_handlers.handlers.haproxy import HAProxyHandler, _builtin
from serf_handlers.handlers.haproxy._jinja import BUILTIN_TEMPLATE, render
from serf_handlers.handlers.haproxy._options import Stats
from serf_handlers.handlers.haproxy._plan import wanted_from_members
from serf_handlers.handlers.haproxy._render import context as render_context
from serf_handlers.handlers.haproxy._state import EMPTY
from support.stats import METRICS_LUA

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")

STATS = {"stats_bind": "127.0.0.1:18404"}
AUTH = {"stats_auth": "ops:s3cr:et!"}
LUA = {"stats_lua": str(METRICS_LUA), "stats_metrics_file": "/var/lib/prometheus/node-exporter/serf_handlers.prom"}


def handler(tmp_path: Path, **extra: str) -> HAProxyHandler:
    return HAProxyHandler(config=str(tmp_path / "haproxy.cfg"), state=str(tmp_path / "s.json"),
                          vars={"bind": "127.0.0.1:18080", "socket": str(tmp_path / "a.sock"), **extra})


@pytest.mark.parametrize("extra", [{}, STATS, {**STATS, **AUTH}, {**STATS, **LUA}, {**STATS, **AUTH, **LUA}],
                         ids=["off", "stats", "auth", "lua", "auth+lua"])
def test_stats_frontend_both_renderers_and_haproxy_check(tmp_path: Path, extra: dict[str, str]) -> None:
    h = handler(tmp_path, **extra)
    members = [Member("web1", "127.0.0.2", "web", {"role": "web", "backend": "stats"})]  # a backend named stats
    servers = wanted_from_members(EMPTY, members, h.options).servers
    ctx = render_context(h.options, servers)
    text = _builtin.render(ctx)
    assert text == render(BUILTIN_TEMPLATE, ctx)
    assert ("frontend stats" in text) == bool(extra)
    assert ("lua-load" in text) == ("stats_lua" in extra)
    assert ("userlist serf_handlers_stats" in text) == ("stats_auth" in extra)
    cfg = tmp_path / "candidate.cfg"
    cfg.write_text(text)
    done = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    if extra:
        # The stats section sits between the http frontend and the backends.
        assert text.index("frontend http") < text.index("frontend stats") < text.index("\nbackend ")


def test_the_stats_record_is_built_once_from_the_vars(tmp_path: Path) -> None:
    assert handler(tmp_path).options.stats is None
    stats = handler(tmp_path, **STATS, **AUTH, **LUA).options.stats
    assert stats == Stats("127.0.0.1:18404", "ops:s3cr:et!", LUA["stats_metrics_file"], LUA["stats_lua"])
    # Without `stats_lua`, the package's own metrics.lua, as the template context has it.
    default = handler(tmp_path, **STATS, stats_metrics_file="/x.prom").options
    assert default.stats is not None and default.stats.lua == render_context(default, {})["stats_lua"]
    assert Path(default.stats.lua).resolve() == METRICS_LUA.resolve()


@pytest.mark.parametrize(
    "extra, message",
    [
        ({**STATS, "stats_auth": "ops"}, "vars.stats_auth: expected 'user:password'"),
        ({**STATS, "stats_auth": "ops:has space"}, "vars.stats_auth"),
        ({**STATS, "stats_auth": "o ps:pw"}, "vars.stats_auth"),
        ({**STATS, "stats_auth": "ops:pw#x"}, "vars.stats_auth"),
        ({**STATS, "stats_auth": "ops:pw$x"}, "vars.stats_auth"),
        ({"stats_bind": "127.0.0.1:1 # x"}, "vars.stats_bind"),
        ({"stats_bind": "a\nb"}, "vars.stats_bind"),
        (AUTH, "vars.stats_bind: needed"),
        ({"stats_metrics_file": "/x.prom"}, "vars.stats_bind: needed"),
        ({**STATS, **LUA, "stats_metrics_file": "/a b.prom"}, "vars.stats_metrics_file"),
        ({**STATS, **LUA, "stats_metrics_file": "/a),x.prom"}, "vars.stats_metrics_file"),
    ],
)
def test_bad_stats_vars_are_refused(tmp_path: Path, extra: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=r"^" + message.replace("$", r"\$").replace("(", r"\(")) as info:
        handler(tmp_path, **extra)
    password = extra.get("stats_auth", "").partition(":")[2]
    if password:
        assert password not in str(info.value)
