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
   `NamedTuple` here is `typing.NamedTuple`'s class syntax with collections.namedtuple's API
   (`_fields`, `_field_defaults`, `_make`, `_replace`, `_asdict`, the repr, pickling), built
   without importing `collections` (a bare start does not) and without compiling a `__new__`
   for each class as namedtuple does (about 0.1 ms a class, some twenty on the haproxy
   path). mypy treats any name `TYPE_CHECKING` as true and sees typing's version.
4. The installed `serf-handle` is our own two-line script (setup.cfg `scripts`), not pip's
   generated console-script wrapper, which imports `re` in pip before 25.0.

tests/test_cli.py checks that an event imports neither typing, yaml, jinja2 nor
importlib.metadata, and that the installed `serf-handle` imports neither `re` nor
`collections` for a log-handler event.
"""

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    from _collections import _tuplegetter

    class _Fields(tuple):
        """What every NamedTuple class shares: collections.namedtuple's API, without
        importing collections or compiling a `__new__` for each class."""

        __slots__ = ()
        # Set on each class (with _field_defaults and __match_args__) by _NamedTupleMeta:
        _fields = ()
        _size = 0  # len(_fields)
        _defaults = ()  # the trailing fields' defaults, in order

        def __new__(cls, *args, **kwargs):
            if not kwargs:  # the fast path: positional arguments only, defaults for the rest
                missing = cls._size - len(args)
                if not missing:
                    return tuple.__new__(cls, args)
                if 0 < missing <= len(cls._defaults):
                    return tuple.__new__(cls, args + cls._defaults[-missing:])
            return tuple.__new__(cls, cls._complete(args, kwargs))

        @classmethod
        def _complete(cls, args, kwargs):
            name, fields = cls.__name__, cls._fields
            if len(args) > len(fields):
                raise TypeError(f"{name}() takes {len(fields)} positional arguments but {len(args)} were given")
            values = list(args)
            for field in fields[len(args) :]:
                if field in kwargs:
                    values.append(kwargs.pop(field))
                elif field in cls._field_defaults:
                    values.append(cls._field_defaults[field])
                else:
                    raise TypeError(f"{name}() missing required argument: {field!r}")
            for key in kwargs:
                if key in fields:
                    raise TypeError(f"{name}() got multiple values for argument {key!r}")
                raise TypeError(f"{name}() got an unexpected keyword argument {key!r}")
            return values

        @classmethod
        def _make(cls, iterable):
            result = tuple.__new__(cls, iterable)
            if len(result) != len(cls._fields):
                raise TypeError(f"Expected {len(cls._fields)} arguments, got {len(result)}")
            return result

        def _replace(self, **changes):
            result = self._make(map(changes.pop, self._fields, self))
            if changes:
                raise ValueError(f"Got unexpected field names: {list(changes)!r}")
            return result

        def _asdict(self):
            return dict(zip(self._fields, self, strict=True))

        def __repr__(self):
            return f"{type(self).__name__}({', '.join(f'{f}={v!r}' for f, v in zip(self._fields, self, strict=True))})"

        def __getnewargs__(self):
            return tuple(self)

    class _NamedTupleMeta(type):
        def __new__(mcls, name, bases, namespace):
            if not bases:  # NamedTuple itself
                return super().__new__(mcls, name, bases, namespace)
            fields = tuple(namespace.get("__annotations__", ()))
            defaults = {field: namespace[field] for field in fields if field in namespace}
            required = len(fields) - len(defaults)
            if any(field in defaults for field in fields[:required]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            body = {k: v for k, v in namespace.items() if k not in defaults}
            body.update(__slots__=(), _fields=fields, _field_defaults=defaults, _size=len(fields),
                        _defaults=tuple(defaults.values()), __match_args__=fields)
            for index, field in enumerate(fields):
                body[field] = _tuplegetter(index, f"Alias for field number {index}")
            return type(name, (_Fields,), body)

    class NamedTuple(metaclass=_NamedTupleMeta):
        """Subclass with annotated fields, as with typing.NamedTuple."""
