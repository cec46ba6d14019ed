"""IEnumBackgroundCopyJobs / IEnumBackgroundCopyFiles: a snapshot with a cursor."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar, overload

T = TypeVar("T")

__all__ = ["Enumerator"]


class Enumerator(Generic[T]):
    """A snapshot of items with a COM-style cursor; also a plain Python sequence and iterator."""

    def __init__(self, items: Sequence[T], position: int = 0) -> None:
        self._items = list(items)
        self._pos = position

    def __len__(self) -> int:
        return len(self._items)

    @property
    def count(self) -> int:
        """GetCount: how many items the snapshot holds."""
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        return self._items[index]

    def __iter__(self) -> Iterator[T]:
        """Iterate from the cursor to the end, moving the cursor."""
        while self._pos < len(self._items):
            item = self._items[self._pos]
            self._pos += 1
            yield item

    def __next__(self) -> T:
        if self._pos >= len(self._items):
            raise StopIteration
        item = self._items[self._pos]
        self._pos += 1
        return item

    def next(self, n: int = 1) -> list[T]:
        """Next(celt): up to *n* items from the cursor (fewer at the end)."""
        items = self._items[self._pos : self._pos + max(0, n)]
        self._pos += len(items)
        return items

    def skip(self, n: int = 1) -> bool:
        """Skip(celt): advance; False (S_FALSE) when the end came first."""
        target = self._pos + max(0, n)
        self._pos = min(target, len(self._items))
        return target <= len(self._items)

    def reset(self) -> None:
        """Reset: back to the first item."""
        self._pos = 0

    def clone(self) -> Enumerator[T]:
        """Clone: an independent enumerator at the same position."""
        return type(self)(self._items, self._pos)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._items)} items, at {self._pos}>"
