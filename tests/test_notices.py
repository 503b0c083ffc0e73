"""Notice collection: nested ``collect`` blocks each receive every notice given inside
them, and leave by identity even when their lists are equal."""

from __future__ import annotations

from taskrel.notices import collect, notice


def test_nested_collectors_with_equal_contents_close_cleanly() -> None:
    with collect() as outer:
        with collect() as inner:  # both hold ["first"] when the inner block ends
            notice("first")
        notice("second")
    assert outer == ["first", "second"] and inner == ["first"]
    with collect() as again:  # nothing is left registered from the blocks above
        notice("third")
    assert again == ["third"] and outer == ["first", "second"]
