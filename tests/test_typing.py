"""serf_handlers/_typing.py's NamedTuple (no `collections`, no compiled `__new__` per class)
behaves as typing.NamedTuple does for everything the package uses, checked side by side."""

from __future__ import annotations

import copy
import pickle
import typing

import pytest

from serf_handlers import _typing


class Point(_typing.NamedTuple):
    """A point."""

    x: int
    y: int
    label: str = "p"
    tags: tuple[str, ...] = ()

    @property
    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)

    def moved(self, dx: int) -> Point:
        return self._replace(x=self.x + dx)


class TypingPoint(typing.NamedTuple):
    x: int
    y: int
    label: str = "p"
    tags: tuple[str, ...] = ()


CALLS = [
    pytest.param((1, 2), {}, id="required only"),
    pytest.param((1, 2, "q"), {}, id="one default given"),
    pytest.param((1, 2, "q", ("a",)), {}, id="all positional"),
    pytest.param((1,), {"y": 2}, id="keyword"),
    pytest.param((), {"tags": ("b",), "y": 2, "x": 1}, id="keywords in any order"),
    pytest.param((1, 2), {"tags": ("c",)}, id="skipping a default"),
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_construction_as_typing_namedtuple(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    ours, theirs = Point(*args, **kwargs), TypingPoint(*args, **kwargs)  # type: ignore[arg-type]
    assert tuple(ours) == tuple(theirs)
    assert (ours.x, ours.y, ours.label, ours.tags) == (theirs.x, theirs.y, theirs.label, theirs.tags)
    assert repr(ours) == repr(theirs).replace("TypingPoint", "Point")
    assert ours._asdict() == theirs._asdict()
    assert ours == tuple(theirs) and hash(ours) == hash(tuple(theirs))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        pytest.param((), {}, id="nothing"),
        pytest.param((1,), {}, id="missing y"),
        pytest.param((1, 2, "q", (), 5), {}, id="too many"),
        pytest.param((1, 2), {"z": 3}, id="unknown keyword"),
        pytest.param((1, 2), {"x": 3}, id="twice"),
    ],
)
def test_wrong_arguments_are_a_type_error(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        TypingPoint(*args, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Point(*args, **kwargs)  # type: ignore[arg-type]


def test_namedtuple_api() -> None:
    p = Point(1, -2)
    assert Point._fields == TypingPoint._fields == ("x", "y", "label", "tags")
    assert Point._field_defaults == TypingPoint._field_defaults == {"label": "p", "tags": ()}
    assert Point.__match_args__ == ("x", "y", "label", "tags")
    assert p._replace(y=5, label="r") == (1, 5, "r", ())
    assert type(p._replace(y=5)) is Point
    with pytest.raises(ValueError, match="unexpected field names"):
        p._replace(z=1)  # type: ignore[call-arg]
    assert Point._make([3, 4, "m", ()]) == Point(3, 4, "m")
    with pytest.raises(TypeError):
        Point._make([3, 4])
    assert (p.norm1, p.moved(2)) == (3, Point(3, -2))
    assert Point.__doc__ == "A point." and Point.__module__ == __name__ and Point.__qualname__ == "Point"
    assert isinstance(p, tuple) and not hasattr(p, "__dict__")
    with pytest.raises(AttributeError):
        p.x = 5  # type: ignore[misc]
    match p:
        case Point(x, y):
            assert (x, y) == (1, -2)


def test_copy_and_pickle_keep_the_class() -> None:
    p = Point(1, 2, "q", ("a",))
    for other in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert other == p and type(other) is Point


def test_a_field_without_default_after_one_with_is_refused() -> None:
    with pytest.raises(TypeError, match="without a default follows"):

        class Bad(_typing.NamedTuple):
            a: int = 0
            b: int  # type: ignore[misc]
