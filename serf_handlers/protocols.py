"""The handler contract: what a handler is, and the optional things it can also offer.

A handler is any callable taking an event (`Handler`). Everything else is optional and
found by name on the handler object:

- `reconcile(members)`: it can rebuild its whole state from the alive members
  (`Reconciler`; run by `serf-handle reconcile`);
- `status()`: it reports its state as text (`StatusReporter`; `serf-handle status`);
- `render(write=False)`: it renders the config for its state (`ConfigRenderer`;
  `serf-handle render`);
- `self_check()`: it checks what it depends on beyond its options (`SelfChecker`;
  `serf-handle check`);
- `refresh_certificates()`: it serves TLS certificates it can reload live (`CertificateKeeper`;
  `serf-handle certs`);
- `cluster_query`: the query by which it answers `serf-handle cluster-check` (`ClusterView`);
- `default_events`: the selectors it runs for when its config entry names none
  (`DefaultEvents`; otherwise `*`);
- `sharing_reloads(owed)`: its runs may end with a reload command that other handlers share
  (`ReloadSharer`); the dispatcher runs each distinct one once per run;
- `takes_role = True` on the class, and a `role` attribute: it filters members by role
  itself (`RoleFilter`). The class is then created with the entry's `role` as an option,
  and the dispatcher hands it every member of an event instead of only those of its role,
  so that it notices a member whose role changed away.

These Protocols are for type checkers and plugin authors. At run time the contract is
checked once per handler, when it is registered, by `dispatch.capabilities`: this module
needs `typing`, which the per-event path never imports (see _typing.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Sequence
    from contextlib import AbstractContextManager

    from .dispatch import OwedReload
    from .events import Event, Member

Reply: TypeAlias = str | bytes | None
"""What a handler returns: a query's reply (str as UTF-8), or None. Ignored for other events."""


class Handler(Protocol):
    """A handler: any callable taking an event. A query handler's return value is the reply.

    Serf re-delivers stale `member-update` events, so a handler must be idempotent:
    applying the same event twice must change nothing the second time.
    """

    def __call__(self, event: Event, /) -> Reply: ...


class Reconciler(Handler, Protocol):
    """A handler that can also rebuild its whole state from the alive members.

    It is given the alive members of its registration's role (all of them without one),
    and must make its state exactly those, whatever events it missed.
    """

    def reconcile(self, members: Sequence[Member], /) -> None: ...


class StatusReporter(Handler, Protocol):
    """A handler that can print its current state (`serf-handle status`)."""

    def status(self) -> str:
        """Its state as text; a `dispatch.Drift` (a str) when what it manages differs from
        that state, so that `serf-handle status` exits 1."""
        ...


class ConfigRenderer(Handler, Protocol):
    """A handler that can render the config its state means (`serf-handle render`);
    with `write`, it also installs it; with `diff`, it returns only a unified diff from
    the installed config ("" when they are equal) and writes nothing."""

    def render(self, write: bool = False, diff: bool = False) -> str: ...


class SelfChecker(Handler, Protocol):
    """A handler that checks what it depends on beyond its options (certificates, a
    template): `serf-handle check` prints `lines` and exits 1 when there are `problems`."""

    def self_check(self) -> tuple[list[str], list[str]]:
        """(lines to print, problems); raises a SerfHandlersError for what stops it working."""
        ...


class CertificateKeeper(Handler, Protocol):
    """A handler that terminates TLS and can make its server load renewed certificate files."""

    def refresh_certificates(self) -> list[str] | None:
        """What it did, one line each; None when it terminates no TLS."""
        ...


class ClusterView(Handler, Protocol):
    """A handler whose view of the cluster other nodes can ask for with a query (`serf-handle
    cluster-check` compares the load balancers' answers)."""

    cluster_query: str


class DefaultEvents(Handler, Protocol):
    """A handler that names the events it runs for when its config entry names none."""

    default_events: tuple[str, ...]


class RoleFilter(Handler, Protocol):
    """A handler that filters members by role itself.

    Its class sets `takes_role = True` and accepts a `role` keyword option (the config
    entry's `role`, when it has one); `role` is the role it then filters on, which may be
    its own default. The dispatcher hands it every member of an event, and keeps `role` on
    its registration for `serf-handle check` and for reconciling.
    """

    takes_role: bool  # True, set in the class body: it is read before the handler is created

    @property
    def role(self) -> str | None: ...


class ReloadSharer(Handler, Protocol):
    """A handler whose run may end with a reload command that other handlers share (three
    templates that all reload one Caddy): the dispatcher runs each distinct argv once per
    run (per `Dispatcher.dispatch` or `reconcile` call), after every handler of the run.

    While `with handler.sharing_reloads(owed):` is open, a run that must reload does not: it
    records the reload as owed in its own state, then appends a `dispatch.OwedReload` to
    `owed` (its argv, how to run it, and how to record the outcome). The dispatcher then
    runs each distinct argv once and hands every handler that owed it the outcome, which it
    records: nothing owed after a reload that ran; still owed, with the error, after one
    that failed (the next run retries it). Outside that block the handler reloads itself.
    """

    def sharing_reloads(self, owed: list[OwedReload], /) -> AbstractContextManager[None]: ...
