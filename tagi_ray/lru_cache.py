"""A bounded mapping that evicts the least recently used entry: the resident set of served
adapters (`adapter_store.ResidentAdapters`) and of meta-training's teachers (`TeacherStore`)."""
from __future__ import annotations

from collections import OrderedDict


class LruCache:
    """A bounded mapping that evicts the least recently used entry."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def get(self, key):
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        return None

    def put(self, key, value) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
            self.evictions += 1

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list:
        """The keys, least recently used first."""
        return list(self._items)

    def stats(self) -> dict:
        return {"size": len(self), "capacity": self.capacity, "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions}
