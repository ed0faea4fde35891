"""engine.frozen.replace must behave exactly like dataclasses.replace on every record and row class of the codec."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import codec, frozen
from engine.partition import types  # noqa: F401 - registers the record classes
from engine.partition.types import InvocationStatus, RetentionPolicy, Status, Target


def _status(**changes: object) -> InvocationStatus:
    target = Target(service="S", handler="h", key="k")
    base = InvocationStatus(invocation_id=bytes(24), target=target, status=Status.INVOKED)
    return dataclasses.replace(base, **changes)


@given(st.integers(0, 2**40), st.integers(0, 9), st.sampled_from([None, "idem"]), st.lists(st.integers(0, 99)))
def test_matches_dataclasses_replace(epoch: int, status: int, idem: str | None, waiting: list[int]) -> None:
    base = _status(children=(b"c",), retention=RetentionPolicy(completion_ms=5, journal_ms=6))
    changes = {"epoch": epoch, "status": status, "idempotency_key": idem, "waiting_completions": tuple(waiting)}
    ours = frozen.replace(base, **changes)
    theirs = dataclasses.replace(base, **changes)
    assert ours == theirs
    assert type(ours) is InvocationStatus
    assert base.epoch == 0  # the original is untouched
    assert codec.encode(ours) == codec.encode(theirs)


def test_no_changes_is_an_equal_copy() -> None:
    base = _status(epoch=3)
    copy = frozen.replace(base)
    assert copy == base and copy is not base


def test_every_codec_class_is_covered() -> None:
    """Each registered dataclass gets the fast path or, when it cannot, dataclasses.replace itself."""
    fast = 0
    for cls in codec._by_tag.values():
        fn = frozen._make_replacer(cls)
        if hasattr(cls, "__slots__") and not hasattr(cls, "__post_init__"):
            assert fn is not frozen._slow_replace, cls
            fast += 1
    assert fast >= 10  # the records and rows of engine.partition.types are all slotted


def test_unknown_field_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="no field"):
        frozen.replace(_status(), epochs=1)


def test_frozen_instances_stay_frozen() -> None:
    copy = frozen.replace(_status(), epoch=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.epoch = 2  # type: ignore[misc]


def test_classes_with_post_init_take_the_slow_path() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("negative")

    with pytest.raises(ValueError, match="negative"):
        frozen.replace(Checked(1), n=-1)
