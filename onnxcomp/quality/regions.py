"""Connected regions of a binary mask, and matching two sets of them.

A one-channel probability map (a text detector's, a salient-object or a
foreground map) is used by its clients as *regions*: DB text detection turns
each connected blob into a box. A few boundary pixels that move under
quantization change a thin text mask's IoU a lot and its boxes not at all, so
the map is judged region by region, like detections: a reference region is
kept when a candidate region overlaps it with IoU >= ``MATCH_IOU``.

Labelling is run-length union-find (4-connectivity): one Python step per run
of foreground pixels, not per pixel, so a page-sized map takes milliseconds.
Regions smaller than ``MIN_PIXELS`` are noise, not regions.
"""

from __future__ import annotations

import numpy as np

MATCH_IOU = 0.5
MIN_PIXELS = 16


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``(labels, count)`` of the 4-connected regions of a 2-D boolean mask (0 = background)."""
    mask = np.asarray(mask, dtype=bool)
    runs: list[tuple[int, int, int]] = []  # (row, start, stop)
    row_runs: list[list[int]] = []
    for r, row in enumerate(mask):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.view(np.int8), [0]])))
        ids = []
        for start, stop in zip(edges[::2], edges[1::2]):
            ids.append(len(runs))
            runs.append((r, int(start), int(stop)))
        row_runs.append(ids)
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for r in range(1, len(row_runs)):
        above, here = row_runs[r - 1], row_runs[r]
        i = j = 0
        while i < len(above) and j < len(here):
            _, a0, a1 = runs[above[i]]
            _, b0, b1 = runs[here[j]]
            if a0 < b1 and b0 < a1:  # the intervals overlap: 4-connected
                parent[find(here[j])] = find(above[i])
            if a1 < b1:
                i += 1
            else:
                j += 1
    labels = np.zeros(mask.shape, dtype=np.int32)
    roots: dict[int, int] = {}
    for k, (r, start, stop) in enumerate(runs):
        labels[r, start:stop] = roots.setdefault(find(k), len(roots) + 1)
    return labels, len(roots)


def match(reference: np.ndarray, candidate: np.ndarray) -> tuple[int, int, int]:
    """``(reference regions, candidate regions, matched)`` of two 2-D boolean masks."""
    ref, n_ref = _regions(reference)
    cand, n_cand = _regions(candidate)
    if not n_ref or not n_cand:
        return n_ref, n_cand, 0
    both = (ref > 0) & (cand > 0)
    pairs, inter = np.unique(ref[both].astype(np.int64) * (n_cand + 1) + cand[both], return_counts=True)
    area_ref = np.bincount(ref.ravel(), minlength=n_ref + 1)
    area_cand = np.bincount(cand.ravel(), minlength=n_cand + 1)
    a, b = pairs // (n_cand + 1), pairs % (n_cand + 1)
    iou = inter / (area_ref[a] + area_cand[b] - inter)
    used_a, used_b, matched = set(), set(), 0
    for k in np.argsort(-iou, kind="stable"):
        if iou[k] < MATCH_IOU:
            break
        if a[k] in used_a or b[k] in used_b:
            continue
        used_a.add(a[k])
        used_b.add(b[k])
        matched += 1
    return n_ref, n_cand, matched


def _regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels with regions under ``MIN_PIXELS`` dropped, renumbered 1..n."""
    labels, count = label(mask)
    if not count:
        return labels, 0
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = areas >= MIN_PIXELS
    keep[0] = False
    renumber = np.zeros(count + 1, dtype=np.int32)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1)
    return renumber[labels], int(keep.sum())
