"""Route one event to every handler registered for it, in registration order.

Selectors use Serf's own filter vocabulary (`member-join`, `user:deploy`, `query`, `*`),
so a handler's `events` read exactly like an `-event-handler` filter.

The handler contract is declared, with its types, in protocols.py. It is checked here
and only here, once per handler, when it is registered: `capabilities` reads what the
handler offers beyond being called into the `Capabilities` kept on its `Registration`,
and no other module looks at a handler's attributes. (protocols.py needs `typing`, which
the event path must not import: see _typing.py.)
"""

from __future__ import annotations

import os
import sys

from . import _log, _metrics
from ._typing import TYPE_CHECKING, NamedTuple
from .errors import ConfigError, EventError, ReplyTooLargeError, SerfHandlersError
from .events import MEMBER_EVENTS, MemberEvent, Query, parse_event

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import IO, Any, TypeVar

    from .events import Event, Member
    from .protocols import (
        CertificateKeeper,
        ConfigRenderer,
        Handler,
        Reconciler,
        ReloadSharer,
        SelfChecker,
        StatusReporter,
    )
    from .protocols import Reply as Reply

    H = TypeVar("H", bound=Callable[..., Reply])
    R = TypeVar("R")

# Serf drops a query reply whose response message is over query_response_size_limit
# (1024 bytes by default). The message is the reply, the responding node's name and a
# msgpack envelope: 41 bytes measured with serf 0.8.2 (43 for a name of 32 bytes or more),
# growing with the query's Lamport time to at most 51. This budget keeps 64 for it.
_SERF_RESPONSE_LIMIT = 1024
QUERY_REPLY_BUDGET = _SERF_RESPONSE_LIMIT - 64  # before the node name: see reply_budget

EXIT_OK, EXIT_HANDLER_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class Drift(str):
    """A status (`StatusReporter.status()`) saying that what the handler manages differs
    from what it should be: `serf-handle status` prints it and exits 1."""


def reply_budget(node_name: str) -> int:
    """The most bytes of query reply that node `node_name` can send back through Serf.

    It holds for the whole reply, which joins those of every handler that answers the
    query; the dispatcher refuses a longer one (ReplyTooLargeError) rather than let Serf
    drop it silently.
    """
    return QUERY_REPLY_BUDGET - len(node_name.encode("utf-8"))


class Capabilities(NamedTuple):
    """What a handler offers beyond being called with an event (see protocols.py)."""

    reconciler: Reconciler | None  # the handler, if it has reconcile(members)
    reporter: StatusReporter | None  # the handler, if it has status()
    renderer: ConfigRenderer | None  # the handler, if it has render(write=False)
    default_events: tuple[str, ...] | None  # its selectors when none are configured
    takes_role: bool  # it filters members by role itself (protocols.RoleFilter)
    role: str | None  # the role such a handler filters on; None for any other handler
    checker: SelfChecker | None = None  # the handler, if it has self_check()
    certificates: CertificateKeeper | None = None  # the handler, if it has refresh_certificates()
    cluster_query: str | None = None  # the query it answers for cluster-check (ClusterView)
    reload_sharer: ReloadSharer | None = None  # the handler, if it has sharing_reloads(owed)


def takes_role(handler: object) -> bool:
    """Whether a handler, or the class that makes it, filters members by role itself
    (`takes_role = True`); such a class is created with the entry's `role` option."""
    return getattr(handler, "takes_role", False) is True


def capabilities(handler: object) -> Capabilities:
    """Read the optional parts of the handler contract from `handler`, checking them.

    The only reader of a handler's attributes; raises ConfigError naming a malformed one.
    """

    def offered(method: str) -> Any:
        value = getattr(handler, method, None)
        if value is not None and not callable(value):
            raise ConfigError(f"{method}: expected a method, got {type(value).__name__}")
        return None if value is None else handler

    events = getattr(handler, "default_events", None)
    if events is not None:
        if not isinstance(events, (tuple, list)) or not events or not all(isinstance(e, str) for e in events):
            raise ConfigError(f"default_events: expected a non-empty tuple of event selectors, got {events!r}")
        try:
            events = tuple(validate_selector(selector) for selector in events)
        except ConfigError as exc:
            raise ConfigError(f"default_events: {exc}") from None
    own_role = takes_role(handler)
    role = getattr(handler, "role", None) if own_role else None
    if role is not None and (not isinstance(role, str) or not role):
        raise ConfigError(f"role: expected a non-empty string or None, got {role!r}")
    query = getattr(handler, "cluster_query", None)
    if query is not None and (not isinstance(query, str) or not query):
        raise ConfigError(f"cluster_query: expected a query name, got {query!r}")
    return Capabilities(
        offered("reconcile"), offered("status"), offered("render"), events, own_role, role,
        offered("self_check"), offered("refresh_certificates"), query, offered("sharing_reloads"),
    )


class Registration(NamedTuple):
    name: str
    handler: Handler
    events: tuple[str, ...]
    role: str | None  # members of this role only; None: of every role
    capabilities: Capabilities

    @property
    def takes_role(self) -> bool:
        """The handler filters members by `role` itself, so it is handed every member
        of an event (and so notices a member whose role changed away)."""
        return self.capabilities.takes_role

    def wants(self, event: Event) -> bool:
        return "*" in self.events or event.type in self.events or (
            not isinstance(event, MemberEvent) and f"{event.type}:{event.name}" in self.events
        )


class Outcome(NamedTuple):
    failed: tuple[tuple[str, str], ...]  # (handler name, what went wrong), one per failure
    reply: bytes  # the query reply (empty for other events, or when nothing replied)

    @property
    def exit_code(self) -> int:
        return EXIT_HANDLER_FAILED if self.failed else EXIT_OK

    def summary(self) -> str:
        """What went wrong, on one line: the error Serf logs when the handler exits 1."""
        return "; ".join(f"handler {name} failed: {why}" for name, why in self.failed)


class OwedReload(NamedTuple):
    """A reload that a handler's run owes (protocols.ReloadSharer). The dispatcher runs each
    distinct `argv` once per run, after every handler of the run, and hands the outcome to
    every handler that owed it."""

    argv: tuple[str, ...]
    run: Callable[[], None]  # runs the argv; raises a SerfHandlersError saying why it failed
    record: Callable[[str | None], None]  # for the handler to record: None (it ran) or why it failed


def run_owed_reloads(owed: Sequence[tuple[str, OwedReload]]) -> list[tuple[str, str]]:
    """Run each distinct argv of `owed` ((handler name, reload), in the order owed) once, and
    hand its outcome to every handler that owed it; (handler name, why) for each failure."""
    groups: dict[tuple[str, ...], list[tuple[str, OwedReload]]] = {}
    for name, reload in owed:
        groups.setdefault(reload.argv, []).append((name, reload))
    failed: list[tuple[str, str]] = []
    for argv, sharing in groups.items():
        error = None
        try:
            sharing[0][1].run()
        except Exception as exc:  # noqa: BLE001 - reported to every handler that shares it
            error = _describe(exc)
        if len(sharing) > 1:
            _log.info(f"reload {list(argv)} ran once for {len(sharing)} handlers", ok=error is None,
                      handlers=",".join(name for name, _ in sharing))
        for name, reload in sharing:
            try:
                reload.record(error)
            except Exception as exc:  # noqa: BLE001 - one handler's state must not stop the others'
                failed.append((name, f"{'reloaded' if error is None else error}; not recorded: {_describe(exc)}"))
                continue
            if error is not None:
                failed.append((name, error))
    return failed


def validate_selector(selector: str) -> str:
    """Return `selector` if Serf's filter vocabulary allows it, else raise ConfigError."""
    kind, colon, name = selector.partition(":")
    if selector == "*" or (not colon and kind in (*MEMBER_EVENTS, "user", "query")):
        return selector
    if colon and kind in ("user", "query") and name:
        return selector
    raise ConfigError(
        f"unknown event selector {selector!r} (expected member-join, member-leave, member-failed, "
        "member-update, member-reap, user, user:NAME, query, query:NAME or *)"
    )


def handler_name(handler: Callable[..., object]) -> str:
    module = getattr(handler, "__module__", None) or "?"
    qualname = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    return f"{module}.{qualname}"


class Dispatcher:
    """A registry of handlers, and the runner that feeds them one Serf event."""

    def __init__(self) -> None:
        self._registrations: list[Registration] = []

    @property
    def registrations(self) -> tuple[Registration, ...]:
        return tuple(self._registrations)

    def register(self, handler: Handler, *events: str, role: str | None = None, name: str | None = None) -> None:
        """Run `handler` for `events` (default: its `default_events`, else all), and only
        with members of `role` (default: every role).

        A handler that takes its role filters members itself, on the role it reports.
        Raises ConfigError for a bad selector or a handler that breaks the contract.
        """
        found = capabilities(handler)
        if found.takes_role and found.role is not None:
            if role is not None and role != found.role:
                raise ConfigError(f"role: the handler filters members of role {found.role!r} itself, not {role!r}")
            role = found.role
        selectors = tuple(validate_selector(selector) for selector in events) or found.default_events or ("*",)
        self._registrations.append(Registration(name or handler_name(handler), handler, selectors, role, found))

    def on(self, *events: str, role: str | None = None) -> Callable[[H], H]:
        """Decorator form of `register`; returns the function unchanged."""

        def decorator(handler: H) -> H:
            self.register(handler, *events, role=role)
            return handler

        return decorator

    def matching(self, event: Event) -> list[tuple[Registration, Event]]:
        """The registrations that run for `event`, each with the event as it will see it."""
        matches: list[tuple[Registration, Event]] = []
        for registration in self._registrations:
            if not registration.wants(event):
                continue
            if isinstance(event, MemberEvent) and registration.role is not None and not registration.takes_role:
                members = tuple(m for m in event.members if m.role == registration.role)
                if not members:
                    continue
                matches.append((registration, event._replace(members=members)))
            else:
                matches.append((registration, event))
        return matches

    def dispatch(self, event: Event) -> Outcome:
        """Run every matching handler; a failing one is logged and the others still run.
        Then the reloads they owe (protocols.ReloadSharer): each distinct argv once."""
        owed: list[tuple[str, OwedReload]] = []
        failed, replies, repliers = self._handlers(event, owed)
        failed += _reloads_failed(owed)
        reply = b"".join(replies)
        if isinstance(event, Query):
            budget = reply_budget(event.node.name)
            if len(reply) > budget:
                error = ReplyTooLargeError(
                    f"query {event.name!r}: reply is {len(reply)} bytes, over Serf's limit of {budget} "
                    f"(query_response_size_limit {_SERF_RESPONSE_LIMIT} minus envelope and node name); no reply sent"
                )
                _log.error(str(error))
                return Outcome((*failed, (", ".join(repliers), str(error))), b"")
        return Outcome(tuple(failed), reply)

    def dispatch_all(self, events: Sequence[Event]) -> Outcome:
        """Several events in one run, as watch mode applies a merged window (joins, then
        leaves...): the reloads they owe run after all of them, each distinct argv once."""
        owed: list[tuple[str, OwedReload]] = []
        failed = [failure for event in events for failure in self._handlers(event, owed)[0]]
        failed += _reloads_failed(owed)
        return Outcome(tuple(failed), b"")

    def _handlers(
        self, event: Event, owed: list[tuple[str, OwedReload]]
    ) -> tuple[list[tuple[str, str]], list[bytes], list[str]]:
        """Every matching handler of `event`: (failures, replies, who replied); reloads owed go to `owed`."""
        failed: list[tuple[str, str]] = []
        replies: list[bytes] = []
        repliers: list[str] = []
        for registration, seen in self.matching(event):
            try:
                reply = _sharing(registration, owed, lambda: registration.handler(seen))  # noqa: B023 - called now
            except Exception as exc:  # noqa: BLE001 - one broken handler must not stop the rest
                failed.append(_failure(registration.name, "failed", exc))
                continue
            if isinstance(event, Query) and reply is not None:
                replies.append(reply.encode("utf-8") if isinstance(reply, str) else bytes(reply))
                repliers.append(registration.name)
        return failed, replies, repliers

    def reconcile(self, members: Sequence[Member]) -> Outcome:
        """Hand the full list of alive members to every handler that can reconcile, then run
        the reloads they owe, each distinct argv once.

        A `Membership` (what `serf-handle reconcile` passes) is read from Serf only when a
        handler first uses it, separately for each handler."""
        failed: list[tuple[str, str]] = []
        owed: list[tuple[str, OwedReload]] = []
        for registration in self._registrations:
            reconciler = registration.capabilities.reconciler
            if reconciler is None or not _takes_member_events(registration.events):
                continue
            chosen = _of_role(members, registration.role)
            try:
                _sharing(registration, owed, lambda: reconciler.reconcile(chosen))  # noqa: B023 - called now
            except Exception as exc:  # noqa: BLE001 - same contract as dispatch
                failed.append(_failure(registration.name, "failed to reconcile", exc))
        failed += _reloads_failed(owed)
        return Outcome(tuple(failed), b"")

    def run(
        self,
        env: Mapping[str, str] | None = None,
        stdin: IO[bytes] | bytes | None = None,
        stdout: IO[bytes] | None = None,
    ) -> int:
        """Parse the event from `env` and `stdin` (default: this process's), dispatch it,
        write a query's reply to `stdout`, and return the exit code for Serf."""
        env = os.environ if env is None else env
        raw = _read_all(sys.stdin.buffer if stdin is None else stdin)
        try:
            event = parse_event(env, raw)
        except EventError as exc:
            _log.error_line(str(exc))
            return EXIT_BAD_INPUT
        _metrics.inc(_metrics.P + "events_total", type=event.type)
        if not isinstance(event, Query):
            outcome = self.dispatch(event)
        else:
            # Serf sends the handler's stdout *and* stderr back as the reply, so nothing
            # but the reply may reach either while handlers run.
            with _log.quiet(), _silenced_fds(enabled=stdout is None):
                outcome = self.dispatch(event)
            if outcome.exit_code == EXIT_OK and outcome.reply:
                out = sys.stdout.buffer if stdout is None else stdout
                out.write(outcome.reply)
                out.flush()
        if outcome.failed:
            # Serf sends no reply for a non-zero exit, so this line cannot corrupt one.
            _log.error_line(outcome.summary())
        return outcome.exit_code


def _sharing(registration: Registration, owed: list[tuple[str, OwedReload]], call: Callable[[], R]) -> R:
    """`call()` (the registration's handler run); the reloads it owes are added to `owed`."""
    sharer = registration.capabilities.reload_sharer
    if sharer is None:
        return call()
    mine: list[OwedReload] = []
    try:
        with sharer.sharing_reloads(mine):
            return call()
    finally:
        owed.extend((registration.name, reload) for reload in mine)  # owed even when the run failed later


def _failure(name: str, what: str, exc: BaseException) -> tuple[str, str]:
    """Log a handler's failure (with a traceback under --debug) and count it."""
    why = _describe(exc)
    _log.exception(f"handler {name} {what}: {why}", exc, handler=name)
    _metrics.inc(_metrics.P + "handler_failures_total", handler=name)
    return name, why


def _reloads_failed(owed: Sequence[tuple[str, OwedReload]]) -> list[tuple[str, str]]:
    """Run the reloads a run owes (`run_owed_reloads`); log and count each handler's failure."""
    failed = run_owed_reloads(owed) if owed else []
    for name, why in failed:
        _log.error(f"handler {name} failed: {why}", handler=name)
        _metrics.inc(_metrics.P + "handler_failures_total", handler=name)
    return failed


def _of_role(members: Sequence[Member], role: str | None) -> Sequence[Member]:
    """The members of `role` (every one for None); a `Membership` stays one, read when used."""
    from .members import Membership

    if role is None:
        return members
    if isinstance(members, Membership):
        return members.with_role(role)
    return [m for m in members if m.role == role]


def _takes_member_events(selectors: Iterable[str]) -> bool:
    return any(s == "*" or s in MEMBER_EVENTS for s in selectors)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SerfHandlersError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _read_all(stdin: IO[bytes] | bytes) -> bytes:
    return stdin if isinstance(stdin, bytes) else stdin.read()


class _silenced_fds:
    """Point file descriptors 1 and 2 at /dev/null, so even a handler's print(),
    a warning or a C library cannot leak into a query reply; restore them on exit."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._saved: list[tuple[int, int]] = []

    def __enter__(self) -> None:
        if not self._enabled:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            for fd in (1, 2):
                self._saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
        finally:
            os.close(devnull)

    def __exit__(self, *exc_info: object) -> None:
        if not self._saved:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self._saved:
            os.dup2(saved, fd)
            os.close(saved)
        self._saved.clear()
