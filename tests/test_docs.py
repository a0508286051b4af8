"""Docs that cannot rot: everything README.md and BENCHMARKS.md name must exist.

Read from the Markdown's code (inline code spans and fenced blocks) and links:
- repository paths (`tests/...`, `docker/...`, `Makefile`, ...; a bare `test_x.py` is looked
  for under tests/; `file.py::test_name` must also define that test; a bare `test_name`
  span must be a test somewhere under tests/; `*` and `…` are globs that must match);
- `make TARGET`: a target of the Makefile;
- `serf-handle COMMAND --flag`: a subcommand and option of the real argparse parser;
- `python -m MODULE`: a module of the repository (or an importable one);
- config keys: the YAML examples' keys, `key: value` spans and `vars.NAME`, against the
  keys the config, the haproxy option parser and the built-in template accept;
- links: relative files and `#anchors` (GitHub's heading slugs).

Each reference is one test, named after the doc, the line and what it names.
"""

from __future__ import annotations

import argparse
import ast
import glob
import importlib.util
import re
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
import jinja2.meta
import pytest
import yaml

from serf_handlers import cli, config
from serf_handlers.handlers.file_sd import _handler as file_sd
from serf_handlers.handlers.haproxy import _options
from serf_handlers.handlers.nginx import _handler as nginx
from serf_handlers.handlers.template import _handler as template

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "BENCHMARKS.md")
# What a repository path starts with: these, and every (non-hidden) top-level directory there is.
TOP_DIRS = {"serf_handlers", "tests", "docker", "supervisor", "bench", "support", "scripts", "docs", "demo", ".ci"}
TOP_FILES = {"setup.cfg", "pyproject.toml", "Makefile", "docker-compose.yml", "README.md", "BENCHMARKS.md",
             ".dockerignore"}
SKIPPED_DIRS = {".git", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", "__pycache__"}


class Ref(NamedTuple):
    doc: str
    line: int
    kind: str  # path, test, make, command, module, key, option, var, link
    text: str


# The handlers whose options come from a declarative table (serf_handlers/_options.py).
KEPT_FILE_HANDLERS = {"template": template.OPTIONS, "file_sd": file_sd.OPTIONS, "nginx": nginx.OPTIONS}


def _top_dirs() -> set[str]:
    found = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".") and "egg-info" not in p.name}
    return TOP_DIRS | found


# --- reading the Markdown ---------------------------------------------------------------

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w-]*)")
# A code span: a run of backticks, up to the next run of the same length, within a paragraph.
_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.DOTALL)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


class Block(NamedTuple):
    line: int  # of the first line inside the fence
    lang: str
    lines: list[str]


def _split(text: str) -> tuple[str, list[Block]]:
    """The prose (fenced lines blanked, so line numbers stay) and the fenced blocks."""
    prose: list[str] = []
    blocks: list[Block] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            blocks.append(Block(number + 1, match.group(2), []))
            prose.append("")
        elif fence is not None and match and match.group(1).startswith(fence) and not match.group(2):
            fence = None
            prose.append("")
        elif fence is not None:
            blocks[-1].lines.append(line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def _code(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[Block]]:
    """(line, text) of every code span (whitespace collapsed), of every line of a fenced
    block but YAML, and the YAML blocks."""
    prose, blocks = _split(text)
    spans = [
        (prose.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split())) for m in _SPAN.finditer(prose)
    ]
    # Jinja blocks are the `template` handler's own templates: their `vars` are the operator's.
    lines = [(b.line + i, line) for b in blocks if b.lang not in ("yaml", "jinja") for i, line in enumerate(b.lines)]
    return spans, lines, [b for b in blocks if b.lang == "yaml"]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    prose, _ = _split(text)
    seen: dict[str, int] = {}
    anchors = set()
    for line in prose.splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


# --- finding the references -------------------------------------------------------------

_PATH_CHARS = r"[\w./*…-]"
_TEST_FILE = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*test_\w*\.py(?:::\w+)*)(?![\w/])")
_BARE_TEST = re.compile(r"test_\w+(?:\[[^\]]*\])?")
# `make` as a command: at the start, or after `$ `, `;`, `&&` or `|` (not "make HAProxy serve" in a sentence).
_MAKE = re.compile(r"(?:^\s*|[;&|]\s*|\$\s+)make\s+([A-Za-z0-9][\w.-]*)")
_SERF_HANDLE = re.compile(r"(?<![\w/.-])serf-handle(?=\s)([^#`'\")]*)")
_PYTHON_M = re.compile(r"(?<![\w-])python[\d.]*\s+-m\s+([\w.]+)")
# A whole span `key: value` (one colon and space: not a quoted log line such as `x: y: z`).
_KEY_VALUE = re.compile(r"([a-z][a-z0-9_]*): (?!.*: )\S.*")
_VARS = re.compile(r"(?<![\w.])vars\.([A-Za-z_]\w*)")


def _path_pattern() -> re.Pattern[str]:
    dirs = "|".join(re.escape(d) for d in sorted(_top_dirs()))
    files = "|".join(re.escape(f) for f in sorted(TOP_FILES))
    return re.compile(rf"(?<![\w./~$-])((?:{dirs})/{_PATH_CHARS}*|(?:{files})(?![\w.-]))")


def _refs_in_code(doc: str, line: int, text: str, whole_span: bool) -> list[Ref]:
    refs: list[Ref] = []
    tests = [m.group(1) for m in _TEST_FILE.finditer(text)]
    refs += [Ref(doc, line, "test", t) for t in tests]
    for match in _path_pattern().finditer(text):
        path = match.group(1).rstrip(".,:")
        if not any(t.startswith(path) or path.startswith(t.split("::")[0]) for t in tests):
            refs.append(Ref(doc, line, "path", path))
    if whole_span and _BARE_TEST.fullmatch(text):
        refs.append(Ref(doc, line, "test", text))
    elif whole_span and re.fullmatch(r"[\w.-]+\.py", text) and not tests:
        refs.append(Ref(doc, line, "path", text))  # a module named by its file name alone
    refs += [Ref(doc, line, "make", m.group(1)) for m in _MAKE.finditer(text)]
    for match in _SERF_HANDLE.finditer(text):
        # Up to a comment, a closing quote or a second column (`serf-handle check   validate ...`).
        words = re.split(r"\s{2,}", match.group(1).strip())[0]
        if words:
            refs.append(Ref(doc, line, "command", words))
    refs += [Ref(doc, line, "module", m.group(1)) for m in _PYTHON_M.finditer(text)]
    refs += [Ref(doc, line, "var", m.group(1)) for m in _VARS.finditer(text)]
    if whole_span and (key := _KEY_VALUE.fullmatch(text)):
        refs.append(Ref(doc, line, "key", key.group(1)))
    return refs


def _refs_in_yaml(doc: str, block: Block) -> list[Ref]:
    """Each key of a YAML example: a whole config (with `handlers:`), else a fragment of a
    haproxy handler's entry (such as `vars:` alone)."""
    if block.lines and re.match(r"#\s*[\w.-]+\.ya?ml\b", block.lines[0]) and "config.yml" not in block.lines[0]:
        return []  # another program's file (`# prometheus.yml`): not ours to check
    data = yaml.safe_load("\n".join(block.lines))

    def at(key: str) -> int:
        for i, line in enumerate(block.lines):
            if re.search(rf"(^|[\s{{,-]){re.escape(key)}:", line):
                return block.line + i
        return block.line

    refs: list[Ref] = []

    def haproxy(entry: dict[str, Any]) -> None:
        for key, value in entry.items():
            if key in ("type", "events"):
                continue
            refs.append(Ref(doc, at(key), "option", key))
            if key == "vars" and isinstance(value, dict):
                refs.extend(Ref(doc, at(name), "var", name) for name in value)

    if not isinstance(data, dict):
        return [Ref(doc, block.line, "key", repr(data))]
    if "handlers" not in data:
        haproxy(data)
        return refs
    for key, value in data.items():
        refs.append(Ref(doc, at(key), "key", key))
        if key == "log" and isinstance(value, dict):
            refs.extend(Ref(doc, at(name), "key", f"log.{name}") for name in value)
    for entry in data.get("handlers") or []:
        refs.extend(Ref(doc, at(key), "key", f"handlers[].{key}") for key in ("type", "events", "role") if key in entry)
        if entry.get("type") == "haproxy":
            haproxy(entry)
        elif entry.get("type") in KEPT_FILE_HANDLERS:
            refs.extend(Ref(doc, at(key), "option", f"{entry['type']}.{key}") for key in entry if key != "type")
    return refs


def references(doc: str, text: str) -> list[Ref]:
    spans, lines, yaml_blocks = _code(text)
    refs = [r for line, span in spans for r in _refs_in_code(doc, line, span, whole_span=True)]
    refs += [r for line, code in lines for r in _refs_in_code(doc, line, code, whole_span=False)]
    for block in yaml_blocks:
        refs += _refs_in_yaml(doc, block)
    prose, _ = _split(text)
    for match in _LINK.finditer(prose):
        target = match.group(1)
        if not re.match(r"[a-z]+:", target):
            refs.append(Ref(doc, prose.count("\n", 0, match.start()) + 1, "link", target))
    # Paths in plain prose too ("(docker/common/serf-drain.sh)"), but for code spans and link targets.
    plain = _LINK.sub(_blank, _SPAN.sub(_blank, prose))
    for match in _path_pattern().finditer(plain):
        refs.append(Ref(doc, plain.count("\n", 0, match.start()) + 1, "path", match.group(1).rstrip(".,:")))
    return refs


def _blank(match: re.Match[str]) -> str:
    """The match as spaces, its newlines kept (so line numbers stay)."""
    return re.sub(r"[^\n]", " ", match.group(0))


# --- what exists ------------------------------------------------------------------------


@cache
def _repo_files() -> tuple[Path, ...]:
    files = []
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if not any(p in SKIPPED_DIRS or p.endswith(".egg-info") for p in parts) and path.is_file():
            files.append(path)
    return tuple(files)


@cache
def _tests_in(path: Path) -> frozenset[str]:
    """`name` and `Class::name` of every function and class in a test file."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            )
    return frozenset(names)


def _test_files() -> list[Path]:
    return [p for p in _repo_files() if p.parts[len(ROOT.parts)] == "tests" and p.suffix == ".py"]


@cache
def _make_targets() -> frozenset[str]:
    targets: set[str] = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.][^:=#\t]*?)\s*::?(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return frozenset(targets)


@cache
def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = cli._parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, dict(subcommands.choices)


def haproxy_options() -> frozenset[str]:
    return frozenset(option.name for option in _options.OPTIONS)


def service_settings() -> frozenset[str]:
    """The settings of a haproxy `backends` entry."""
    from serf_handlers.handlers.haproxy._routes import Service

    return frozenset(Service._fields)


@cache
def template_vars() -> frozenset[str]:
    """The variables the built-in template reads, but those the handler itself provides."""
    source = (ROOT / "serf_handlers" / "templates" / "haproxy.cfg.j2").read_text()
    names = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(source))
    return frozenset(names - _options.RESERVED_VARS)


def _config_keys() -> frozenset[str]:
    entry = set(config.HandlerSpec._fields) - {"where", "options"}
    return frozenset(
        config._TOP_KEYS | {f"log.{k}" for k in config._LOG_KEYS} | {f"handlers[].{k}" for k in entry}
    )


def _check_path(text: str) -> str | None:
    if "*" in text or "…" in text:
        pattern = text.replace("…", "*")
        return None if glob.glob(pattern, root_dir=ROOT) else f"{text}: matches nothing"
    if "/" in text:
        return None if (ROOT / text).exists() else f"{text}: no such file or directory"
    matches = [p for p in _repo_files() if p.name == text]
    return None if matches else f"{text}: no such file anywhere in the repository"


def _check_test(text: str) -> str | None:
    path, *names = text.split("::")
    if not path.endswith(".py"):  # a bare test name
        name = path.split("[")[0]
        found = any(name in _tests_in(p) for p in _test_files())
        return None if found else f"{text}: no test of that name under tests/"
    if "/" in path:
        files = [ROOT / path] if (ROOT / path).is_file() else []
    else:
        files = [p for p in _test_files() if p.name == path]
    if not files:
        return f"{path}: no such test file" + ("" if "/" in path else " under tests/")
    if names and not any("::".join(names) in _tests_in(f) for f in files):
        return f"{text}: {path} has no test {'::'.join(names)}"
    return None


def _check_command(text: str) -> str | None:
    parser, subcommands = _parsers()
    current = parser
    words = [w.strip("[]") for w in text.split() if w.strip("[]") not in ("", "|", "…", "...")]
    value_next = False
    for word in words:
        if value_next:
            value_next = False
        elif word.startswith("-"):
            flag, equals, _ = word.partition("=")
            action = current._option_string_actions.get(flag)
            if action is None:
                where = "serf-handle" if current is parser else f"serf-handle {current.prog.split()[-1]}"
                return f"serf-handle {text}: {where} has no option {flag}"
            value_next = action.nargs != 0 and not equals
        elif current is parser:
            if word not in subcommands:
                return f"serf-handle {text}: no subcommand {word!r} (there are: {', '.join(subcommands)})"
            current = subcommands[word]
        else:
            return f"serf-handle {text}: {word!r} is not an argument of it"
    return None


def _check_module(text: str) -> str | None:
    top = text.split(".")[0]
    if (ROOT / top).is_dir() or (ROOT / f"{top}.py").is_file():
        base = ROOT.joinpath(*text.split("."))
        found = (base / "__main__.py").is_file() or base.with_suffix(".py").is_file()
        return None if found else f"python -m {text}: no such module in the repository"
    return None if importlib.util.find_spec(text) else f"python -m {text}: no such module"


def _check_link(doc: str, target: str) -> str | None:
    path, _, anchor = target.partition("#")
    file = ROOT / doc if not path else (ROOT / doc).parent / path
    if not file.exists():
        return f"{target}: no such file"
    if anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
        return f"{target}: no heading with the anchor #{anchor} in {file.name}"
    return None


def problem(ref: Ref) -> str | None:
    """Why the reference names nothing that exists; None when it does."""
    if ref.kind == "path":
        return _check_path(ref.text)
    if ref.kind == "test":
        return _check_test(ref.text)
    if ref.kind == "make":
        return None if ref.text in _make_targets() else f"make {ref.text}: no such target in the Makefile"
    if ref.kind == "command":
        return _check_command(ref.text)
    if ref.kind == "module":
        return _check_module(ref.text)
    if ref.kind == "option":
        kind, _, name = ref.text.rpartition(".")
        if kind:
            known = {option.name for option in KEPT_FILE_HANDLERS[kind]} | {"events"}
            return None if name in known else f"{name}: not an option of the {kind} handler"
        return None if ref.text in haproxy_options() else f"{ref.text}: not an option of the haproxy handler"
    if ref.kind == "var":
        return None if ref.text in template_vars() else f"vars.{ref.text}: the built-in template has no such variable"
    if ref.kind == "key":
        keys = _config_keys()
        known = keys | {k.rsplit(".", 1)[-1] for k in keys} | haproxy_options() | service_settings() | template_vars()
        return None if ref.text in known else f"{ref.text}: no config key, option or variable"
    if ref.kind == "link":
        return _check_link(ref.doc, ref.text)
    raise AssertionError(f"unknown kind {ref.kind}")


# --- the tests ----------------------------------------------------------------------------

REFS = [ref for doc in DOCS for ref in references(doc, (ROOT / doc).read_text())]


def _id(ref: Ref) -> str:
    text = ref.text if len(ref.text) <= 70 else ref.text[:67] + "..."
    return f"{ref.doc}:{ref.line} {ref.kind} {text}"


@pytest.mark.parametrize("ref", [pytest.param(ref, id=_id(ref)) for ref in REFS])
def test_what_the_docs_name_exists(ref: Ref) -> None:
    assert problem(ref) is None, f"{ref.doc}:{ref.line}: {problem(ref)}"


@pytest.mark.parametrize(
    ("kind", "at_least"),
    [
        pytest.param("path", 40, id="paths"),
        pytest.param("test", 15, id="tests"),
        pytest.param("make", 5, id="make targets"),
        pytest.param("command", 15, id="serf-handle commands"),
        pytest.param("module", 3, id="python -m modules"),
        pytest.param("option", 20, id="haproxy options"),
        pytest.param("var", 10, id="template variables"),
        pytest.param("key", 10, id="config keys"),
        pytest.param("link", 5, id="links"),
    ],
)
def test_the_docs_are_really_read(kind: str, at_least: int) -> None:
    """The reading finds what the docs name (a broken pattern would find nothing and pass)."""
    found = [ref for ref in REFS if ref.kind == kind]
    assert len(found) >= at_least, found


def test_every_haproxy_option_is_documented() -> None:
    """The README's haproxy example names every option the handler accepts."""
    documented = {ref.text for ref in REFS if ref.kind == "option" and ref.doc == "README.md"}
    assert haproxy_options() - documented == set()


@pytest.mark.parametrize(
    "markdown",
    [
        pytest.param("| x | `tests/test_hostile_input.py::test_malformed_input` | ok |", id="renamed test file"),
        pytest.param("`tests/test_haproxy_hostile_input.py::test_no_such_test`", id="missing test function"),
        pytest.param("`test_crash_safety.py`", id="bare test file"),
        pytest.param("`test_crash_safety.py::test_kill_9_at_random_points_during_200_updates`", id="bare file::test"),
        pytest.param("`test_no_such_thing_anywhere`", id="bare test name"),
        pytest.param("`serf_handlers/no_such_module.py`", id="package path"),
        pytest.param("```sh\ndocker build -f docker/haproxy/Dockerfile.old .\n```", id="path in a code block"),
        pytest.param("`setup.py`", id="bare file name"),
        pytest.param("started by serf-drain (docker/common/serf-drain.bash)", id="path in prose"),
        pytest.param("`scripts/*.nope`", id="glob"),
        pytest.param("`make bench-all`", id="make target"),
        pytest.param("```sh\nmake lint     # ruff\n```", id="make target in a code block"),
        pytest.param("`serf-handle drain`", id="subcommand"),
        pytest.param("`serf-handle render --dry-run`", id="subcommand option"),
        pytest.param("`serf-handle --role lb`", id="top-level option"),
        pytest.param("```\nserf-handle status [--json]      the servers\n```", id="option in a usage block"),
        pytest.param("`python -m benchmarks`", id="python -m"),
        pytest.param("```yaml\nhandlers:\n  - type: haproxy\n    reload_bellow: 3\n```", id="haproxy option"),
        pytest.param("```yaml\nhandlers:\n  - type: template\n    destinaton: /x\n```", id="template option"),
        pytest.param("```yaml\nhandlers:\n  - type: file_sd\n    port_tags: x\n```", id="file_sd option"),
        pytest.param("```yaml\nhandlers:\n  - type: haproxy\n    vars: {tls_cert: /x}\n```", id="var in YAML"),
        pytest.param("```yaml\nlogging: {level: info}\nhandlers: []\n```", id="top-level key"),
        pytest.param("```yaml\n    vars: {}\n    sockets: /run/x\n```", id="fragment key"),
        pytest.param("`vars.tls_cert`", id="var"),
        pytest.param("`on_fail: maint`", id="key: value"),
        pytest.param("see [the bench](bench/README.md)", id="link"),
        pytest.param("see [Operating](#operations)", id="anchor"),
    ],
)
def test_the_check_catches_what_does_not_exist(markdown: str) -> None:
    refs = references("README.md", markdown)
    assert refs, "nothing read"
    assert any(problem(ref) for ref in refs), refs
