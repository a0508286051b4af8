"""Typing helpers that cost nothing at run time.

Importing `typing` costs about a third of a bare Python start, and Serf starts a process
per event, so the event path never imports it: annotations are strings (PEP 563), names
used only in annotations are imported under `if TYPE_CHECKING:`, and `NamedTuple` here is
`typing.NamedTuple`'s class syntax built on `collections.namedtuple` (what typing's own
version does too). mypy treats any name `TYPE_CHECKING` as true and sees typing's version.
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
