"""`serf-handle`: the console script Serf runs once per event.

The only module that touches os.environ, sys.argv, sys.stdin and the process exit.
Exit codes: 0 ok, 1 a handler failed, 2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Mapping, Sequence

from . import __version__, _log
from .config import Config, build_dispatcher, find_config, load_config
from .dispatch import EXIT_BAD_INPUT, EXIT_HANDLER_FAILED, EXIT_OK, Dispatcher
from .errors import ConfigError, SerfHandlersError


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ
    try:
        config = load_config(*find_config(args.config, env), cache_dir=_cache_dir(env))
        quiet_query = args.command is None and env.get("SERF_EVENT") == "query"
        # A query's stderr is its reply: never configure an stderr log for one.
        try:
            _log.configure(config.log_level, config.log_format, config.log_file, debug=args.debug and not quiet_query)
        except ConfigError as exc:
            raise ConfigError(f"{config.source}: {exc}") from None
        dispatcher = build_dispatcher(config)
        command: Callable[[argparse.Namespace, Config, Dispatcher, Mapping[str, str]], int]
        command = _COMMANDS[args.command or "handle"]
        return command(args, config, dispatcher, env)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT, args.debug)
    except SerfHandlersError as exc:
        return _fail(str(exc), EXIT_HANDLER_FAILED, args.debug)


def _handle(args: argparse.Namespace, config: Config, dispatcher: Dispatcher, env: Mapping[str, str]) -> int:
    return dispatcher.run(env, sys.stdin.buffer)


def _check(args: argparse.Namespace, config: Config, dispatcher: Dispatcher, env: Mapping[str, str]) -> int:
    print(f"config: {config.source}")
    print(f"log: level={config.log_level} format={config.log_format} file={config.log_file or 'stderr'}")
    if not dispatcher.registrations:
        print("handlers: none")
    for registration in dispatcher.registrations:
        role = f" role={registration.role}" if registration.role is not None else ""
        print(f"handler {registration.name}: events={','.join(registration.events)}{role}")
    return EXIT_OK


def _reconcile(args: argparse.Namespace, config: Config, dispatcher: Dispatcher, env: Mapping[str, str]) -> int:
    from .members import alive_members

    rpc_addr = args.rpc_addr or env.get("SERF_RPC_ADDR")
    rpc_auth = args.rpc_auth or env.get("SERF_RPC_AUTH")
    members, skipped = alive_members(rpc_addr, rpc_auth)
    for message in skipped:
        _log.error(f"member skipped: {message}")
    _log.info(f"reconcile: {len(members)} alive member(s)", members=",".join(sorted(m.name for m in members)))
    outcome = dispatcher.reconcile(members)
    return EXIT_HANDLER_FAILED if outcome.failed or skipped else EXIT_OK


def _status(args: argparse.Namespace, config: Config, dispatcher: Dispatcher, env: Mapping[str, str]) -> int:
    reporters = [(r.name, r.handler.status) for r in dispatcher.registrations if hasattr(r.handler, "status")]
    if not reporters:
        raise ConfigError(f"{config.source}: no configured handler reports a status (configure a haproxy handler)")
    for name, status in reporters:
        print(f"# {name}")
        print(status(), end="")
    return EXIT_OK


def _render(args: argparse.Namespace, config: Config, dispatcher: Dispatcher, env: Mapping[str, str]) -> int:
    renderers = [(r.name, r.handler.render) for r in dispatcher.registrations if hasattr(r.handler, "render")]
    if not renderers:
        raise ConfigError(f"{config.source}: no configured handler renders a config (configure a haproxy handler)")
    for _name, render in renderers:
        sys.stdout.write(render(write=args.write))
    return EXIT_OK


_COMMANDS = {"handle": _handle, "check": _check, "reconcile": _reconcile, "status": _status, "render": _render}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="config file (default: $SERF_HANDLERS_CONFIG, else /etc/serf-handlers/config.yml)",
    )
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser = argparse.ArgumentParser(
        prog="serf-handle",
        parents=[common],
        description="Handle one Serf event (run by `serf agent -event-handler`), or manage the handlers.",
    )
    parser.set_defaults(config=None, debug=False, command=None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("check", parents=[common], help="validate the config and list which handler runs for what")
    reconcile = sub.add_parser(
        "reconcile", parents=[common], help="rebuild handler state from `serf members` (alive members only)"
    )
    reconcile.add_argument("--rpc-addr", help="Serf RPC address (default: $SERF_RPC_ADDR, else 127.0.0.1:7373)")
    reconcile.add_argument("--rpc-auth", help="Serf RPC auth key (default: $SERF_RPC_AUTH)")
    sub.add_parser("status", parents=[common], help="print the current backends and servers")
    render = sub.add_parser("render", parents=[common], help="print the config for the current state")
    render.add_argument("--write", action="store_true", help="also install it (validated, atomically), no reload")
    return parser


def _cache_dir(env: Mapping[str, str]) -> str | None:
    if env.get("SERF_HANDLERS_CACHE_DIR"):
        return env["SERF_HANDLERS_CACHE_DIR"]
    base = env.get("XDG_CACHE_HOME") or (os.path.join(env["HOME"], ".cache") if env.get("HOME") else None)
    return os.path.join(base, "serf-handlers") if base else None


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exc()
    _log.error_line(message)
    return code

