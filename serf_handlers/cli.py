"""`serf-handle`: the console script Serf runs once per event.

The only module that touches os.environ, sys.argv, sys.stdin and the process exit.
Exit codes: 0 ok, 1 a handler failed, 2 bad input or configuration.
"""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace

from . import __version__, _cache, _log, _metrics
from ._typing import TYPE_CHECKING
from .config import DEFAULT_MAX_QUEUE, Config, build_dispatcher, find_config, load_config
from .dispatch import EXIT_BAD_INPUT, EXIT_HANDLER_FAILED, EXIT_OK, Dispatcher, Drift
from .errors import ConfigError, HandlerError, SerfHandlersError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _event_args(argv) or _parser().parse_args(argv, namespace=SimpleNamespace())
    env = os.environ
    config = None
    try:
        config = load_config(*find_config(args.config, env), cache_dir=_cache.cache_dir(env))
        quiet_query = args.command is None and env.get("SERF_EVENT") == "query"
        # A query's stderr is its reply: never configure an stderr log for one.
        try:
            _log.configure(config.log_level, config.log_format, config.log_file, debug=args.debug and not quiet_query)
        except ConfigError as exc:
            raise ConfigError(f"{config.source}: {exc}") from None
        dispatcher = build_dispatcher(config)
        command: Callable[[SimpleNamespace, Config, Dispatcher, Mapping[str, str]], int]
        command = _COMMANDS[args.command or "handle"]
        code = command(args, config, dispatcher, env)
    except ConfigError as exc:
        code = _fail(str(exc), EXIT_BAD_INPUT, args.debug)
    except SerfHandlersError as exc:
        code = _fail(str(exc), EXIT_HANDLER_FAILED, args.debug)
    command_name = args.command or "handle"
    if config is not None and config.metrics and (command_name in _RECORDED or getattr(args, "write", False)):
        _write_metrics(config, command_name, code, time.perf_counter() - started)
    return code


# The commands that change something (and `render --write`), so whose runs the metrics file records.
_RECORDED = ("handle", "reconcile", "certs")


def _write_metrics(config: Config, command: str, code: int, seconds: float) -> None:
    """Add this run to the metrics file. A failure is logged (never to a query's stderr,
    which is its reply) and changes no exit code: the event itself was handled."""
    assert config.metrics is not None
    handlers = [spec.type + f" ({spec.where})" for spec in config.handlers]
    _metrics.run_finished(command, code, seconds, time.time(), handlers)
    try:
        _metrics.flush(config.metrics)
    except (OSError, SerfHandlersError) as exc:
        _log.error(f"metrics: cannot write {config.metrics}: {exc}")


def _handle(args: SimpleNamespace, config: Config, dispatcher: Dispatcher, env: Mapping[str, str]) -> int:
    return dispatcher.run(env, sys.stdin.buffer)


def _check(args: SimpleNamespace, config: Config, dispatcher: Dispatcher, env: Mapping[str, str]) -> int:
    print(f"config: {config.source}")
    print(f"log: level={config.log_level} format={config.log_format} file={config.log_file or 'stderr'}")
    if not dispatcher.registrations:
        print("handlers: none")
    for registration in dispatcher.registrations:
        role = f" role={registration.role}" if registration.role is not None else ""
        print(f"handler {registration.name}: events={','.join(registration.events)}{role}")
    problems: list[str] = []
    for registration in dispatcher.registrations:
        checker = registration.capabilities.checker
        if checker is None:
            continue
        try:
            lines, found = checker.self_check()
        except SerfHandlersError as exc:
            raise type(exc)(f"{registration.name}: {exc}") from None
        print("".join(f"handler {registration.name}: {line}\n" for line in lines), end="")
        problems.extend(f"{registration.name}: {problem}" for problem in found)
    if problems:
        # What still works but needs the operator (an expiring certificate): `check` is the alarm.
        raise HandlerError("; ".join(problems))
    return EXIT_OK


def _certs(args: SimpleNamespace, config: Config, dispatcher: Dispatcher, env: Mapping[str, str]) -> int:
    keepers = [(r.name, keeper) for r in dispatcher.registrations if (keeper := r.capabilities.certificates)]
    done = 0
    for name, keeper in keepers:
        try:
            lines = keeper.refresh_certificates()
        except SerfHandlersError as exc:
            raise type(exc)(f"{name}: {exc}") from None
        if lines is not None:
            done += 1
            print("".join(f"{name}: {line}\n" for line in lines), end="")
    if not done:
        raise ConfigError(f"{config.source}: no handler terminates TLS (haproxy: set vars.tls_bind and vars.tls_certs)")
    return EXIT_OK


def _reconcile(args: SimpleNamespace, config: Config, dispatcher: Dispatcher, env: Mapping[str, str]) -> int:
    from .members import Membership, read_members

    rpc_addr = args.rpc_addr or env.get("SERF_RPC_ADDR")
    rpc_auth = args.rpc_auth or env.get("SERF_RPC_AUTH")
    # Read once up front, so that an unreachable agent or bad auth is one clear error; each
    # handler then reads again under its own lock (see Membership).
    first = read_members(rpc_addr, rpc_auth)
    for message in first.skipped:
        _log.error(f"member skipped: {message}")
    _log.debug(f"reconcile: {len(first.alive)} alive member(s)", members=",".join(sorted(m.name for m in first.alive)))
    outcome = dispatcher.reconcile(Membership(lambda: read_members(rpc_addr, rpc_auth)))
    if outcome.failed:
        _log.error_line(outcome.summary())
    elif first.skipped:
        _log.error_line(f"{len(first.skipped)} member(s) skipped: {first.skipped[0]}")
    return EXIT_HANDLER_FAILED if outcome.failed or first.skipped else EXIT_OK


def _status(args: SimpleNamespace, config: Config, dispatcher: Dispatcher, env: Mapping[str, str]) -> int:
    reporters = [(r.name, reporter) for r in dispatcher.registrations if (reporter := r.capabilities.reporter)]
    if not reporters:
        raise ConfigError(f"{config.source}: no configured handler reports a status (configure a haproxy handler)")
    drift = False
    for name, reporter in reporters:
        print(f"# {name}")
        text = reporter.status()
        drift = drift or isinstance(text, Drift)
        print(text, end="")
    return EXIT_HANDLER_FAILED if drift else EXIT_OK


def _print_metrics(args: SimpleNamespace, config: Config, dispatcher: Dispatcher, env: Mapping[str, str]) -> int:
    if not config.metrics:
        raise ConfigError(f"{config.source}: metrics: not set (add `metrics: PATH` to write the handler's metrics)")
    sys.stdout.write(_metrics.text(config.metrics))
    return EXIT_OK


def _render(args: SimpleNamespace, config: Config, dispatcher: Dispatcher, env: Mapping[str, str]) -> int:
    renderers = [renderer for r in dispatcher.registrations if (renderer := r.capabilities.renderer)]
    if not renderers:
        raise ConfigError(f"{config.source}: no configured handler renders a config (configure a haproxy handler)")
    if args.diff:
        # Like diff(1): 0 equal, 1 different, 2 trouble; nothing is written.
        try:
            diffs = [renderer.render(diff=True) for renderer in renderers]
        except SerfHandlersError as exc:
            return _fail(str(exc), EXIT_BAD_INPUT, args.debug)
        sys.stdout.write("".join(diffs))
        return EXIT_HANDLER_FAILED if any(diffs) else EXIT_OK
    for renderer in renderers:
        sys.stdout.write(renderer.render(write=args.write))
    return EXIT_OK


def _cluster_check(args: SimpleNamespace, config: Config, dispatcher: Dispatcher, env: Mapping[str, str]) -> int:
    from . import cluster
    from .errors import SerfRPCError

    # The query this node's own handler answers (the load balancers share one handler
    # config), else the default; the role is the load balancers' own tag, not the
    # handler's `role` (that is the role of the members it serves).
    queries = [query for r in dispatcher.registrations if (query := r.capabilities.cluster_query)]
    query = args.query or (queries[0] if queries else cluster.DEFAULT_QUERY)
    try:
        lines, code = cluster.check(args.role or cluster.DEFAULT_ROLE, query, args.rpc_addr or env.get("SERF_RPC_ADDR"),
                                    args.rpc_auth or env.get("SERF_RPC_AUTH"), env, args.timeout)
    except SerfRPCError as exc:
        return _fail(f"cluster-check: {exc}", cluster.EXIT_ERROR, args.debug)
    print("\n".join(lines), flush=True)
    return code


def _watch(args: SimpleNamespace, config: Config, dispatcher: Dispatcher, env: Mapping[str, str]) -> int:
    try:
        from .watch import serve
    except ModuleNotFoundError as exc:
        if exc.name != "msgpack":
            raise
        raise ConfigError("watch: needs the msgpack library: install Debian's python3-msgpack, "
                          "or pip install 'serf-handlers[watch]'") from None
    running = [config]

    def reload() -> tuple[Config, Dispatcher]:
        """SIGHUP: the config file again, in full; any error leaves everything as it was."""
        new = load_config(*find_config(args.config, env), cache_dir=_cache.cache_dir(env))
        handlers = build_dispatcher(new)
        old = running[0]
        try:
            _log.configure(new.log_level, new.log_format, new.log_file, debug=args.debug)
        except ConfigError as exc:
            _log.configure(old.log_level, old.log_format, old.log_file, debug=args.debug)
            raise ConfigError(f"{new.source}: {exc}") from None
        running[0] = new
        return new, handlers

    rpc_addr = args.rpc_addr or env.get("SERF_RPC_ADDR") or "127.0.0.1:7373"
    rpc_auth = args.rpc_auth or env.get("SERF_RPC_AUTH")
    return serve(config, dispatcher, reload, rpc_addr, rpc_auth, args.max_queue)


def _seconds(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 300:
        raise argparse.ArgumentTypeError(f"expected seconds, more than 0 and at most 300, got {text!r}")
    return value


def _count(text: str) -> int:
    import argparse

    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to 1000000, got {text!r}")
    return int(text)


_COMMANDS = {"handle": _handle, "check": _check, "reconcile": _reconcile, "status": _status, "render": _render,
             "metrics": _print_metrics, "certs": _certs, "cluster-check": _cluster_check, "watch": _watch}


def _parser() -> argparse.ArgumentParser:
    import argparse

    def add_common(parser: argparse.ArgumentParser, top: bool) -> None:
        # Accepted before and after the subcommand; after it, only overrides when given.
        parser.add_argument(
            "--config",
            metavar="PATH",
            default=None if top else argparse.SUPPRESS,
            help="config file (default: $SERF_HANDLERS_CONFIG, else /etc/serf-handlers/config.yml)",
        )
        parser.add_argument(
            "--debug", action="store_true", default=False if top else argparse.SUPPRESS, help="show tracebacks"
        )

    parser = argparse.ArgumentParser(
        prog="serf-handle",
        description="Handle one Serf event (run by `serf agent -event-handler`), or manage the handlers.",
    )
    add_common(parser, True)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {
        "check": "validate the config and list which handler runs for what",
        "reconcile": "rebuild handler state from `serf members` (and repair what HAProxy has)",
        "status": "print the current backends and servers",
        "render": "print the config for the current state",
        "metrics": "print the handler's own metrics (the `metrics:` file, Prometheus text format)",
        "certs": "check the TLS certificates (vars.tls_certs) and make HAProxy serve the files as they are now",
        "cluster-check": "ask every load balancer (a Serf query) what it serves; exit 0 when all agree, "
        "1 when not or one does not answer, 2 on error",
        "watch": "run the handlers in one long-running process fed by the agent's RPC event stream "
        "(instead of -event-handler); SIGHUP re-reads the config, SIGTERM stops",
    }
    for name, help in commands.items():
        command = sub.add_parser(name, help=help, description=help)
        add_common(command, False)
        _add_command_arguments(name, command)
    return parser


def _add_command_arguments(name: str, command: argparse.ArgumentParser) -> None:
    if name in ("reconcile", "cluster-check", "watch"):
        command.add_argument("--rpc-addr", help="Serf RPC address (default: $SERF_RPC_ADDR, else 127.0.0.1:7373)")
        command.add_argument("--rpc-auth", help="Serf RPC auth key (default: $SERF_RPC_AUTH)")
    if name == "cluster-check":
        command.add_argument("--timeout", type=_seconds, metavar="S",
                             help="how long the load balancers have to answer (default: Serf's, about 3 s)")
        command.add_argument("--role", default="lb",
                             help="the load balancers' role tag (default: lb, as the images set it)")
        command.add_argument("--query", default=None,
                             help="the query the haproxy handlers answer (default: this node's configured "
                                  "haproxy handler's `query`, else backends)")
    if name == "watch":
        command.add_argument("--max-queue", type=_count, default=DEFAULT_MAX_QUEUE, metavar="N",
                             help="records queued before the backlog collapses into one reconcile "
                                  f"(default: {DEFAULT_MAX_QUEUE})")
    if name == "render":
        how = command.add_mutually_exclusive_group()
        how.add_argument("--write", action="store_true", help="also install it (validated, atomically), no reload")
        how.add_argument(
            "--diff", action="store_true", help="only show how it differs from the installed config (exit 1 if so)"
        )


def _event_args(argv: Sequence[str]) -> SimpleNamespace | None:
    """Parse the per-event command line (`[--config PATH] [--debug]`) without argparse.

    Building the argparse parser costs more than the rest of a run (it imports shutil
    and searches for gettext catalogues), and Serf pays it on every event. Anything
    else, including every mistake, goes to argparse for its usual messages.
    """
    args = SimpleNamespace(config=None, debug=False, command=None)
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--debug":
            args.debug = True
        elif arg == "--config" and rest and not rest[0].startswith("-"):
            args.config = rest.pop(0)
        elif arg.startswith("--config=") and len(arg) > 9:
            args.config = arg[9:]
        else:
            return None
    return args


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exc()
    _log.error_line(message)
    return code

