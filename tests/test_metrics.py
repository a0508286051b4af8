"""The handler's own metrics (`metrics: PATH`): what real `serf-handle` runs write, read back
with prometheus-client's own text parser; counters across runs, concurrent runs, the
`metrics` command, the config key, and the event path's imports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serf_handlers import _metrics
from support.processes import SERF_HANDLE, Processes
from support.site import Site, member_line

MEMBER = b"web1\t127.0.0.1\tweb\trole=web\n"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, parsed by prometheus-client: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def log_yml(tmp_path: Path, metrics: Path) -> Path:
    yml = tmp_path / "log.yml"
    yml.write_text(f"log: {{level: info, file: /dev/null}}\nmetrics: {metrics}\nhandlers: [{{type: log}}]\n")
    return yml


def run(yml: Path, event: str | None = "member-join", stdin: bytes = MEMBER, *args: str,
        **extra: str) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": "/usr/bin:/bin", "SERF_SELF_NAME": "lb", "SERF_HANDLERS_CACHE_DIR": str(yml.parent / "c"), **extra}
    if event is not None:
        env["SERF_EVENT"] = event
    return subprocess.run([SERF_HANDLE, "--config", str(yml), *args], input=stdin, env=env,
                          capture_output=True, timeout=60, check=False)


def test_render_escapes_labels_and_prometheus_client_reads_it() -> None:
    counters = {"serf_handlers_handler_failures_total": {_metrics.labels(handler='a "b"\\c\nd'): 2}}
    gauges = {"serf_handlers_haproxy_servers": {_metrics.labels(backend="web", state="ready"): 3}}
    text = _metrics.render(counters, gauges)
    assert value(text, "serf_handlers_handler_failures_total", handler='a "b"\\c\nd') == 2
    assert value(text, "serf_handlers_haproxy_servers", backend="web", state="ready") == 3
    assert value(text, "serf_handlers_events_total", type="member-reap") == 0  # known types start at zero
    assert _metrics.parse(text) == (
        {**counters, "serf_handlers_events_total": {f'{{type="{t}"}}': 0 for t in _metrics.EVENT_TYPES},
         **{name: {"": 0} for name in _metrics.FAMILIES if name.startswith("serf_handlers_haproxy_")
            and name.endswith("_total")}},
        gauges,
    )
    assert _metrics.render(*_metrics.parse(text)) == text


def test_three_joins_and_a_leave_through_the_runtime_api(procs: Processes, short_dir: Path) -> None:
    """A real HAProxy in runtime-API mode: 3 joins, 1 leave; the numbers are what happened."""
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed")
    site = Site(short_dir, log={"level": "info", "file": str(short_dir / "handler.log")})
    site.metrics = short_dir / "serf_handlers.prom"
    site.serve(procs, "runtime")
    for i in (1, 2, 3):
        assert site.join(member_line(f"web{i}", f"127.0.0.{i + 1}")).returncode == 0
    assert site.run("member-leave", member_line("web2", "127.0.0.3")).returncode == 0
    text = site.metrics.read_text()
    assert value(text, "serf_handlers_events_total", type="member-join") == 3
    assert value(text, "serf_handlers_events_total", type="member-leave") == 1
    assert value(text, "serf_handlers_events_total", type="member-failed") == 0
    assert value(text, "serf_handlers_haproxy_reloads_total") == 0  # all through the runtime API
    assert site.reload_count() == 0
    assert value(text, "serf_handlers_haproxy_runtime_commands_total") >= 4 * 1 + 3 * 3  # reads, adds, removal
    assert value(text, "serf_handlers_haproxy_servers", backend="web", state="ready") == 2
    assert value(text, "serf_handlers_haproxy_servers", backend="web", state="maint") == 0
    assert value(text, "serf_handlers_haproxy_skipped_members_total") == 0
    assert value(text, "serf_handlers_handler_failures_total", handler="haproxy (handlers[0])") == 0
    assert value(text, "serf_handlers_runs_total", command="handle", result="ok") == 4
    assert value(text, "serf_handlers_last_run_exit_code", command="handle") == 0
    assert value(text, "serf_handlers_last_success_timestamp_seconds", command="handle") > 1.7e9
    assert 0 < value(text, "serf_handlers_last_run_duration_seconds", command="handle") < 30
    # `serf-handle metrics` prints the same text; it records no run itself.
    printed = site.run(None, args=["metrics"])
    assert printed.returncode == 0 and printed.stdout.decode() == text == site.metrics.read_text()
    # An invalid member: skipped with an error, counted once, and the failure counted.
    bad = site.join(member_line("bad", "127.0.0.9", port="99999"))
    assert bad.returncode == 1
    text = site.metrics.read_text()
    assert value(text, "serf_handlers_haproxy_skipped_members_total") == 1
    assert value(text, "serf_handlers_haproxy_skipped_members") == 1
    assert value(text, "serf_handlers_handler_failures_total", handler="haproxy (handlers[0])") == 1
    assert value(text, "serf_handlers_runs_total", command="handle", result="failed") == 1
    assert value(text, "serf_handlers_last_run_exit_code", command="handle") == 1


def test_reload_mode_counts_reloads(tmp_path: Path) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed")
    site = Site(tmp_path)  # reloads are a recording argv: no HAProxy needed
    site.metrics = tmp_path / "m.prom"
    site.write_yml()
    assert site.join(member_line("web1", "127.0.0.2")).returncode == 0
    assert site.join(member_line("web2", "127.0.0.3")).returncode == 0
    assert site.join(member_line("web2", "127.0.0.3")).returncode == 0  # no change, no reload
    text = site.metrics.read_text()
    assert value(text, "serf_handlers_haproxy_reloads_total") == site.reload_count() == 2
    assert value(text, "serf_handlers_haproxy_runtime_commands_total") == 0
    assert value(text, "serf_handlers_events_total", type="member-join") == 3


def test_counters_survive_runs_and_restart_when_the_file_is_deleted(tmp_path: Path) -> None:
    prom = tmp_path / "m.prom"
    yml = log_yml(tmp_path, prom)
    for _ in range(2):
        assert run(yml).returncode == 0
    assert run(yml, "user", b"", SERF_USER_EVENT="deploy", SERF_USER_LTIME="7").returncode == 0
    text = prom.read_text()
    assert value(text, "serf_handlers_events_total", type="member-join") == 2
    assert value(text, "serf_handlers_events_total", type="user") == 1
    assert oct(prom.stat().st_mode & 0o777) == "0o644"  # node_exporter reads it as another user
    prom.unlink()
    assert run(yml).returncode == 0
    assert value(prom.read_text(), "serf_handlers_events_total", type="member-join") == 1
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp" in p.name) == []


def test_concurrent_runs_lose_no_increment(tmp_path: Path) -> None:
    prom = tmp_path / "m.prom"
    yml = log_yml(tmp_path, prom)
    assert run(yml).returncode == 0  # fills the config cache
    env = {"PATH": "/usr/bin:/bin", "SERF_EVENT": "member-join", "SERF_SELF_NAME": "lb",
           "SERF_HANDLERS_CACHE_DIR": str(tmp_path / "c")}
    total = 1
    for _ in range(4):  # 4 waves of 15 at once: bounded load on 2 cores
        wave = [subprocess.Popen([SERF_HANDLE, "--config", str(yml)], stdin=subprocess.PIPE, env=env)
                for _ in range(15)]
        for proc in wave:
            assert proc.stdin is not None
            proc.stdin.write(MEMBER)
            proc.stdin.close()
        assert [proc.wait(60) for proc in wave] == [0] * 15
        total += 15
    text = prom.read_text()
    assert value(text, "serf_handlers_events_total", type="member-join") == total
    assert value(text, "serf_handlers_runs_total", command="handle", result="ok") == total


def test_an_unwritable_metrics_file_is_logged_and_changes_no_exit_code(tmp_path: Path) -> None:
    log = tmp_path / "h.log"
    yml = tmp_path / "c.yml"
    yml.write_text(f"log: {{file: {log}}}\nmetrics: {tmp_path}/missing/m.prom\nhandlers: [{{type: log}}]\n")
    done = run(yml)
    assert done.returncode == 0 and done.stderr == b""
    assert "metrics: cannot write" in log.read_text()


def test_metrics_key_is_validated_and_the_command_needs_it(tmp_path: Path) -> None:
    yml = tmp_path / "c.yml"
    for bad in ('""', "5", "[a]", f"{tmp_path}/"):
        yml.write_text(f"metrics: {bad}\n")
        done = run(yml)
        assert done.returncode == 2, bad
        assert b"metrics:" in done.stderr
    yml.write_text("handlers: [{type: log}]\n")
    done = run(yml, None, b"", "metrics")
    assert done.returncode == 2 and b"metrics: not set" in done.stderr
    yml.write_text(f"metrics: {tmp_path}/none.prom\n")
    done = run(yml, None, b"", "metrics")  # no run yet: what the first run starts from
    assert done.returncode == 0
    assert value(done.stdout.decode(), "serf_handlers_events_total", type="member-join") == 0
    assert not (tmp_path / "none.prom").exists()


def test_event_path_with_metrics_imports_neither_typing_yaml_nor_jinja2(tmp_path: Path) -> None:
    yml = log_yml(tmp_path, tmp_path / "m.prom")
    script = (
        "import sys; from serf_handlers.cli import main; code = main(['--config', sys.argv[1]]);"
        "print(code, *(m in sys.modules for m in ('yaml', 'jinja2', 'typing')))"
    )
    env = {"SERF_EVENT": "member-join", "SERF_HANDLERS_CACHE_DIR": str(tmp_path / "c"), "PATH": "/usr/bin:/bin"}
    outputs = [
        subprocess.run([sys.executable, "-c", script, str(yml)], input=MEMBER, capture_output=True, env=env,
                       timeout=30, check=True).stdout.decode().strip()
        for _ in range(2)
    ]
    assert outputs[1] == "0 False False False"
    assert value((tmp_path / "m.prom").read_text(), "serf_handlers_events_total", type="member-join") == 2
