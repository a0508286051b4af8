from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from serf_handlers import cli

JOIN_ENV = {"SERF_EVENT": "member-join", "SERF_SELF_NAME": "lb"}
MEMBER = b"web1\t10.0.0.1\tweb\tport=80\n"


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]):
    """Run cli.main as Serf would: env, stdin bytes; returns (exit code, stdout, stderr)."""

    def runner(argv: list[str], env: dict[str, str] | None = None, stdin: bytes = b"") -> tuple[int, str, str]:
        for key in list(cli.os.environ):
            if key.startswith("SERF_"):
                monkeypatch.delenv(key)
        monkeypatch.setenv("SERF_HANDLERS_CACHE_DIR", str(tmp_path / "cache"))
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(stdin)))
        code = cli.main(argv)
        out, err = capsysbinary.readouterr()
        return code, out.decode(), err.decode()

    return runner


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("- a\n- b\n", "the top level: expected a mapping, got list", id="not a mapping"),
        pytest.param("logs: {}\n", "logs: unknown key (expected one of handlers, log, metrics, reconcile_interval, "
                     "wait)", id="unknown top key"),
        pytest.param("log: {colour: red}\n", "log.colour: unknown key", id="unknown log key"),
        pytest.param("log: {level: loud}\n", "log.level: expected one of debug, info, warning, error", id="level"),
        pytest.param("log: {format: xml}\n", "log.format: expected one of text, json", id="format"),
        pytest.param("log: {file: 3}\n", "log.file: expected a non-empty string, got int 3", id="file type"),
        pytest.param("log: {file: /nonexistent/dir/x.log}\n", "log.file: cannot open", id="log file unwritable"),
        pytest.param("handlers: {type: log}\n", "handlers: expected a list", id="handlers not a list"),
        pytest.param("handlers: [log]\n", "handlers[0]: expected a mapping, got str 'log'", id="entry not a mapping"),
        pytest.param("handlers: [{events: [user]}]\n", "handlers[0].type: missing", id="no type"),
        pytest.param(
            "handlers: [{type: log}, {type: log, role: [web]}]\n",
            "handlers[1].role: expected a non-empty string, got list",
            id="role wrong type",
        ),
        pytest.param(
            "handlers: [{type: log, events: [member-joined]}]\n",
            "handlers[0].events: unknown event selector 'member-joined'",
            id="bad selector",
        ),
        pytest.param(
            "handlers: [{type: log, events: []}]\n", "handlers[0].events: expected a non-empty list", id="no events"
        ),
        pytest.param(
            "handlers: [{type: log, colour: red}]\n",
            "handlers[0] (log): cannot create handler: TypeError",
            id="unknown option of a built-in",
        ),
        pytest.param(
            "handlers: [{type: nosuchplugin}]\n",
            "handlers[0] (nosuchplugin): unknown handler type 'nosuchplugin'",
            id="unknown type",
        ),
        pytest.param(
            "handlers: [{type: 'no_such_module:f'}]\n",
            "handler 'no_such_module:f' failed to import: ModuleNotFoundError",
            id="module:attr import fails",
        ),
        pytest.param(
            "handlers: [{type: 'os.path:nothing_here'}]\n",
            "module 'os.path' has no attribute 'nothing_here'",
            id="module:attr missing attribute",
        ),
        pytest.param(
            "handlers: [{type: 'os.path:join', x: 1}]\n",
            "x: unknown option(s); a function handler takes none",
            id="function given options",
        ),
        pytest.param("handlers: [{type: log\n", "invalid YAML", id="broken YAML"),
    ],
)
def test_config_errors_exit_2_with_file_place_and_problem(run, tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    code, out, err = run(["--config", path], JOIN_ENV, MEMBER)
    assert code == 2
    assert out == ""
    assert err.startswith(f"serf-handle: error: {path}: ")
    assert message in err
    assert err.count("\n") == 1


def test_missing_explicit_config_is_an_error(run, tmp_path: Path) -> None:
    code, _, err = run(["--config", str(tmp_path / "nope.yml")], JOIN_ENV, MEMBER)
    assert (code, err) == (2, f"serf-handle: error: {tmp_path / 'nope.yml'}: config file not found\n")


def test_config_from_environment_variable(run, tmp_path: Path) -> None:
    path = write(tmp_path, "handlers: []\n")
    code, out, _ = run(["check"], {"SERF_HANDLERS_CONFIG": path})
    assert code == 0
    assert f"config: {path}" in out and "handlers: none" in out


def test_no_config_file_means_only_the_log_handler(run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cli, "find_config", lambda path, env: (str(tmp_path / "absent.yml"), False))
    code, _, err = run([], JOIN_ENV, MEMBER)
    assert code == 0
    assert "INFO member-join event=member-join name=web1 addr=10.0.0.1 role=web tags=\"port=80\"" in err


def test_check_lists_handlers_and_events(run, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "handlers:\n  - type: log\n    events: [member-join, user:deploy]\n    role: web\n",
    )
    code, out, _ = run(["check", "--config", path])
    assert code == 0
    assert "handler log (handlers[0]): events=member-join,user:deploy role=web" in out


def test_log_handler_json_to_file(run, tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    path = write(tmp_path, f"log: {{format: json, file: {log}}}\n")
    code, _, err = run(["--config", path], JOIN_ENV, b"a\\nb\t10.0.0.1\tweb\tk=v\n")
    assert (code, err) == (0, "")
    import json

    record = json.loads(log.read_text())
    assert (record["event"], record["name"], record["tags"]) == ("member-join", "a\nb", {"k": "v"})


def test_text_log_keeps_hostile_names_on_one_line(run, tmp_path: Path) -> None:
    code, _, err = run([], JOIN_ENV, b"evil\\nINFO forged line\t10.0.0.1\tweb\t\n")
    assert code == 0
    assert err.count("\n") == 1
    assert 'name="evil\\nINFO forged line"' in err


def test_query_keeps_stderr_clean_for_the_reply(run, tmp_path: Path) -> None:
    env = {"SERF_EVENT": "query", "SERF_QUERY_NAME": "ping", "SERF_QUERY_LTIME": "1"}
    code, out, err = run([], env, b"payload\n")  # the default log handler runs for every event
    assert (code, out, err) == (0, "", "")


def test_bad_event_exits_2(run) -> None:
    code, _, err = run([], {"SERF_EVENT": "member-join"}, b"web1\t999.0.0.1\tweb\t\n")
    assert code == 2
    assert err == "serf-handle: error: stdin line 1: invalid IP address '999.0.0.1'\n"


def test_version() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0


def test_entry_point_plugin_gets_its_options(run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    created: list[dict[str, object]] = []

    class Plugin:
        def __init__(self, **options: object) -> None:
            created.append(options)

        def __call__(self, event: object) -> None:
            pass

    class FakeEntryPoint:
        value = "fake_dist.plugin:Plugin"

        def load(self) -> type:
            return Plugin

    import importlib.metadata

    def entry_points(group: str, name: str) -> list[FakeEntryPoint]:
        return [FakeEntryPoint()] if (group, name) == ("serf_handlers.handlers", "myplugin") else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    path = write(tmp_path, "handlers:\n  - type: myplugin\n    channel: '#ops'\n")
    code, _, _ = run(["--config", path], JOIN_ENV, MEMBER)
    assert code == 0
    assert created == [{"channel": "#ops"}]


def test_entry_point_that_fails_to_load_is_named(run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Broken:
        value = "broken_dist:handler"

        def load(self) -> object:
            raise ImportError("No module named 'requests'")

    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group, name: [Broken()])
    path = write(tmp_path, "handlers: [{type: broken}]\n")
    code, _, err = run(["--config", path], JOIN_ENV, MEMBER)
    assert code == 2
    assert "plugin 'broken' (broken_dist:handler) failed to load: ImportError: No module named 'requests'" in err


def test_event_path_imports_neither_yaml_jinja2_entry_points_nor_typing(tmp_path: Path) -> None:
    path = write(tmp_path, "log: {level: info}\nhandlers: [{type: log, events: [member-join]}]\n")
    script = (
        "import sys; from serf_handlers.cli import main; code = main(['--config', sys.argv[1]]);"
        "print(code, *(m in sys.modules for m in ('yaml', 'jinja2', 'importlib.metadata', 'typing')))"
    )
    env = {"SERF_EVENT": "member-join", "SERF_HANDLERS_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}

    def once() -> str:
        done = subprocess.run(
            [sys.executable, "-c", script, path], input=MEMBER, capture_output=True, env=env, timeout=30, check=True
        )
        return done.stdout.decode().strip()

    assert once() == "0 True False False False"  # the first run parses the YAML and fills the cache
    assert once() == "0 False False False False"  # later runs import none of them
    Path(path).write_text("handlers: []\n")
    assert once() == "0 True False False False"  # a changed file is parsed again


def test_python_dash_m_works(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "serf_handlers", "--version"], capture_output=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.decode().startswith("serf-handle ")


def test_installed_serf_handle_is_our_launcher_and_an_event_imports_no_re(tmp_path: Path) -> None:
    """bin/serf-handle is serf_handlers/serf-handle (setup.cfg `scripts`), not pip's generated
    wrapper (which imports `re` before pip 25), and a log-handler event imports neither `re`
    nor `collections`. Run by its own shebang's interpreter with -S, so that only the script
    and the package count, not what the site's .pth files import (the editable install's
    finder imports pathlib, hence re)."""
    script = Path(sys.executable).parent / "serf-handle"
    launcher = Path(cli.__file__).with_name("serf-handle").read_text()
    installed = script.read_text()
    shebang, _, body = installed.partition("\n")
    assert body == launcher.partition("\n")[2], f"{script} is not serf_handlers/serf-handle: reinstall the package"
    assert shebang.startswith("#!/") and launcher.startswith("#!python\n")
    interpreter = shebang[2:].strip()
    assert Path(interpreter).samefile(sys.executable), shebang
    path = write(tmp_path, "log: {file: /dev/null}\nhandlers: [{type: log}]\n")
    env = {"SERF_EVENT": "member-join", "SERF_HANDLERS_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    warm = subprocess.run([str(script), "--config", path], input=MEMBER, env=env, capture_output=True, timeout=30)
    assert warm.returncode == 0, warm.stderr  # parses the YAML (site-packages) and fills the cache
    package_root = str(Path(cli.__file__).parent.parent)
    done = subprocess.run([interpreter, "-S", "-X", "importtime", str(script), "--config", path], input=MEMBER,
                          env={**env, "PYTHONPATH": package_root}, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.decode().splitlines()
                if line.startswith("import time:") and "|" in line}
    assert {"serf_handlers.cli", "serf_handlers.handlers.log"} <= imported  # the event really ran
    assert not imported & {"re", "collections", "typing", "yaml", "importlib", "enum"}


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--config", "{path}", "check"], id="config before the subcommand"),
        pytest.param(["check", "--config", "{path}"], id="config after the subcommand"),
        pytest.param(["--config={path}", "check"], id="config with ="),
    ],
)
def test_config_option_anywhere(run, tmp_path: Path, argv: list[str]) -> None:
    path = write(tmp_path, "handlers: []\n")
    code, out, _ = run([arg.format(path=path) for arg in argv])
    assert code == 0
    assert f"config: {path}" in out


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--config"], id="config without a path"),
        pytest.param(["--bogus"], id="unknown option"),
        pytest.param(["frobnicate"], id="unknown subcommand"),
    ],
)
def test_bad_command_line_exits_2(run, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run(argv)
    assert info.value.code == 2


@pytest.mark.parametrize(("role", "shown"), [("api", "api"), (None, "web")])  # configured, or the handler's default
def test_check_shows_the_role_a_handler_filters_itself(run, tmp_path: Path, role: str | None, shown: str) -> None:
    entry = f"type: haproxy, config: {tmp_path / 'h.cfg'}, state: {tmp_path / 's.json'}"
    path = write(tmp_path, f"handlers: [{{{entry}{f', role: {role}' if role else ''}}}]\n")
    code, out, _ = run(["check", "--config", path])
    assert code == 0
    events = "member-join,member-leave,member-failed,member-update,member-reap,query:backends"
    assert f"handler haproxy (handlers[0]): events={events} role={shown}\n" in out


def test_status_and_render_come_from_any_handler_offering_them(
    run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "reporting_plugin.py").write_text(
        "class Reporter:\n"
        "    def __call__(self, event):\n        pass\n"
        "    def status(self):\n        return 'all good\\n'\n"
        "    def render(self, write=False):\n        return f'rendered write={write}\\n'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "reporting_plugin", raising=False)
    path = write(tmp_path, "handlers:\n  - type: log\n  - type: reporting_plugin:Reporter\n")
    assert run(["status", "--config", path])[:2] == (0, "# reporting_plugin:Reporter (handlers[1])\nall good\n")
    assert run(["render", "--config", path, "--write"])[:2] == (0, "rendered write=True\n")


@pytest.mark.parametrize(("command", "message"), [("status", "reports a status"), ("render", "renders a config")])
def test_status_and_render_without_a_handler_offering_them_exit_2(
    run, tmp_path: Path, command: str, message: str
) -> None:
    path = write(tmp_path, "handlers: [{type: log}]\n")
    code, _, err = run([command, "--config", path])
    assert code == 2
    assert f"no configured handler {message}" in err
