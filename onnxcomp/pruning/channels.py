"""Channel identities and the union-find that couples them.

Every output channel of a prunable layer (a Conv's filter, a Gemm's output
feature) gets an integer *channel id*. The dependency analysis then records
which channels must disappear together — a residual ``Add`` couples channel
``i`` of both operands, a depthwise conv couples its input and output channel
``i`` — by uniting their ids. The connected components are the units a pruner
may remove; a component joined with the reserved id :data:`FROZEN` is never
removed.

Positions of a tensor that carry no prunable channel (a graph input, the output
of an op the analysis does not understand) are marked :data:`FIXED` (-1) in id
arrays; uniting a channel with a fixed position freezes it, because the other
side cannot lose that position.
"""

from __future__ import annotations

import dataclasses

import numpy as np

FROZEN = 0
"""The id every frozen channel is united with."""

FIXED = -1
"""Marks a tensor position that holds no prunable channel (never removed)."""


@dataclasses.dataclass(frozen=True)
class Space:
    """The output channels of one source layer: ids ``start .. start + size - 1``."""

    index: int
    node: str
    start: int
    size: int

    @property
    def ids(self) -> np.ndarray:
        return np.arange(self.start, self.start + self.size, dtype=np.int64)


class ChannelSets:
    """Union-find over channel ids, with the reason each frozen channel was frozen."""

    def __init__(self) -> None:
        self._parent: list[int] = [FROZEN]
        self._space_of: list[int] = [-1]
        self.spaces: list[Space] = []
        self._space_parent: list[int] = []
        self._reasons: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._parent)

    def new_space(self, node: str, size: int) -> Space:
        """Fresh ids for the ``size`` output channels of ``node``."""
        space = Space(len(self.spaces), node, len(self._parent), int(size))
        self._parent.extend(range(space.start, space.start + space.size))
        self._space_of.extend([space.index] * space.size)
        self.spaces.append(space)
        self._space_parent.append(space.index)
        return space

    def space_of(self, channel: int) -> int:
        """Index of the space that created ``channel`` (-1 for FROZEN)."""
        return self._space_of[channel]

    def find(self, channel: int) -> int:
        parent = self._parent
        root = channel
        while parent[root] != root:
            root = parent[root]
        while parent[channel] != root:
            parent[channel], channel = root, parent[channel]
        return root

    def roots(self, ids: np.ndarray) -> np.ndarray:
        """Component of every id (FIXED positions map to FROZEN)."""
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.fromiter((self.find(int(i)) if i >= 0 else FROZEN for i in flat), np.int64, flat.size)
        return out.reshape(np.shape(ids))

    def group_of(self, space: int) -> int:
        """Representative space of the spaces coupled with ``space`` (frozen or not)."""
        parent = self._space_parent
        while parent[space] != space:
            parent[space] = parent[parent[space]]
            space = parent[space]
        return space

    def _union(self, a: int, b: int) -> None:
        sa, sb = self._space_of[a], self._space_of[b]
        if sa >= 0 and sb >= 0:
            ga, gb = self.group_of(sa), self.group_of(sb)
            if ga != gb:
                self._space_parent[max(ga, gb)] = min(ga, gb)
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb == FROZEN or (ra != FROZEN and rb < ra):
            ra, rb = rb, ra
        self._parent[rb] = ra

    def unite(self, a: np.ndarray, b: np.ndarray, reason: str) -> None:
        """Couple ``a[i]`` with ``b[i]`` for every position (arrays broadcast).

        A FIXED position on either side freezes the channel on the other side,
        with ``reason``.
        """
        a, b = np.broadcast_arrays(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
        pairs = np.unique(np.stack([a.reshape(-1), b.reshape(-1)], axis=1), axis=0)
        for x, y in pairs:
            x, y = int(x), int(y)
            if x == y:
                continue
            if x < 0 or y < 0:
                live = y if x < 0 else x
                if live >= 0:
                    self.freeze(np.array([live]), reason)
                continue
            self._union(x, y)

    def unite_along(self, ids: np.ndarray, axis: int, reason: str) -> np.ndarray:
        """Couple all entries of ``ids`` along ``axis``; returns ``ids`` with that axis dropped."""
        first = np.take(ids, 0, axis=axis)
        for k in range(1, ids.shape[axis]):
            self.unite(first, np.take(ids, k, axis=axis), reason)
        return first

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        """Make the components of ``ids`` unprunable, remembering why."""
        for i in np.unique(np.asarray(ids, dtype=np.int64).reshape(-1)):
            i = int(i)
            if i < 0:
                continue
            root = self.find(i)
            if root != FROZEN:
                self._reasons.setdefault(i, reason)
                self._union(FROZEN, root)

    def is_frozen(self, channel: int) -> bool:
        return self.find(channel) == FROZEN

    def freeze_reasons(self, ids: np.ndarray) -> list[str]:
        """The distinct reasons recorded for any of ``ids`` (in first-seen order)."""
        wanted = {int(i) for i in np.asarray(ids).reshape(-1)}
        seen: dict[str, None] = {}
        for channel, reason in self._reasons.items():
            if channel in wanted:
                seen.setdefault(reason, None)
        return list(seen)

    def components(self) -> dict[int, np.ndarray]:
        """Root -> the ids in that component (FROZEN excluded)."""
        ids = np.arange(1, len(self._parent), dtype=np.int64)
        roots = self.roots(ids)
        order = np.argsort(roots, kind="stable")
        roots, ids = roots[order], ids[order]
        cuts = np.flatnonzero(np.diff(roots)) + 1
        out = {}
        for chunk_roots, chunk_ids in zip(np.split(roots, cuts), np.split(ids, cuts)):
            if chunk_roots.size and chunk_roots[0] != FROZEN:
                out[int(chunk_roots[0])] = chunk_ids
        return out
