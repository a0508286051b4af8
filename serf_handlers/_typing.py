"""Typing helpers that cost nothing at run time, and the package's import rule.

Serf starts a process per event, so start-up is most of an event's cost. The import rule:

1. On the event path (cli.main, config, dispatch, and the configured handlers' __call__),
   a standard-library module that a bare Python start does not already load, and every
   third-party module (yaml, jinja2), is imported inside the function that needs it, as
   late as possible: often in the branch that needs it (ipaddress only for IPv6).
2. The package's own modules import each other eagerly, at the top: they are small, and
   the dependencies stay visible. One is made lazy only when `python -X importtime` shows
   it costs the event path (protocols.py, because it needs `typing`; members.py, only used
   by `serf-handle reconcile`). Modules off the event path import as usual.
3. `typing` is never imported at run time on the event path: it costs about a third of a
   bare Python start. Annotations are strings (PEP 563), names used only in annotations are
   imported under `if TYPE_CHECKING:` (this module's, which is not typing's), and
   `NamedTuple` here is `typing.NamedTuple`'s class syntax built on
   `collections.namedtuple` (what typing's own version does too). mypy treats any name
   `TYPE_CHECKING` as true and sees typing's version.

tests/test_cli.py checks that an event imports neither typing, yaml, jinja2 nor
importlib.metadata.
"""

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    from collections import namedtuple

    class _NamedTupleMeta(type):
        def __new__(mcls, name, bases, namespace):
            if not bases:  # NamedTuple itself
                return super().__new__(mcls, name, bases, namespace)
            fields = tuple(namespace.get("__annotations__", ()))
            defaults = tuple(namespace[field] for field in fields if field in namespace)
            base = namedtuple(name, fields, defaults=defaults, module=namespace.get("__module__"))
            extra = {k: v for k, v in namespace.items() if k not in fields and k != "__annotations__"}
            return type(name, (base,), {**extra, "__slots__": ()})

    class NamedTuple(metaclass=_NamedTupleMeta):
        """Subclass with annotated fields, as with typing.NamedTuple."""
