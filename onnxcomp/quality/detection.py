"""Decoding detector outputs into boxes, and matching two sets of detections.

Two layouts are read:

* one tensor of YOLO style: ``[B, 4+C, N]`` (YOLOv8 and later: centre x, y,
  width, height, then C class scores per anchor) or ``[B, N, 5+C]`` (YOLOv5:
  the same with an objectness score before the class scores, multiplied in);
* two tensors, boxes ``[B, N, 4]`` (x1, y1, x2, y2) and scores ``[B, N, C]``
  or ``[B, C, N]``.

Decoding keeps anchors whose best class score reaches ``CONFIDENCE``, then
class-aware non-maximum suppression at ``NMS_IOU`` (the settings of
ultralytics' predictor), at most ``MAX_DETECTIONS`` per image. A reference
detection is *kept* when an unused candidate detection of the same class
overlaps it with IoU >= ``MATCH_IOU``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CONFIDENCE = 0.25
NMS_IOU = 0.45
MATCH_IOU = 0.5
MAX_DETECTIONS = 300


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where boxes and scores are in a detector's outputs.

    Attributes:
        boxes: Output index of the boxes (or of the single YOLO tensor).
        scores: Output index of the scores (None: the single YOLO tensor).
        features_axis: Axis of the 4+C (or 5+C) values in the single tensor,
            or of the C classes in a separate scores tensor.
        objectness: The single tensor has an objectness score at index 4.
    """

    boxes: int
    scores: int | None
    features_axis: int
    objectness: bool = False


def yolo_layout(shape: tuple[int, ...], index: int) -> Layout | None:
    """The layout of a single ``[B, 4+C, N]`` / ``[B, N, 5+C]`` tensor, or None."""
    if len(shape) != 3 or min(shape[1], shape[2]) < 5:
        return None
    features, anchors = (1, 2) if shape[1] < shape[2] else (2, 1)
    if shape[anchors] < 2 * shape[features]:
        return None
    return Layout(index, None, features, objectness=features == 2)


def decode(outputs: list[np.ndarray], layout: Layout, item: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes ``[K, 4]`` (x1, y1, x2, y2), scores ``[K]``, classes ``[K]`` of batch item ``item`` after NMS."""
    if layout.scores is None:
        table = np.asarray(outputs[layout.boxes][item], dtype=np.float64)
        if layout.features_axis == 1:
            table = table.T  # [N, 4+C]
        centre = table[:, :4]
        scores = table[:, 5:] * table[:, 4:5] if layout.objectness else table[:, 4:]
        boxes = np.concatenate([centre[:, :2] - centre[:, 2:] / 2, centre[:, :2] + centre[:, 2:] / 2], axis=1)
    else:
        boxes = np.asarray(outputs[layout.boxes][item], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(outputs[layout.scores][item], dtype=np.float64)
        if layout.features_axis == 1:
            scores = scores.T
    if scores.shape[1] == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)
    classes = scores.argmax(axis=1)
    best = scores[np.arange(len(classes)), classes]
    keep = np.flatnonzero(best >= CONFIDENCE)
    boxes, best, classes = boxes[keep], best[keep], classes[keep]
    chosen = _nms(boxes, best, classes)
    return boxes[chosen], best[chosen], classes[chosen]


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one ``[4]`` box with ``[K, 4]`` boxes (x1, y1, x2, y2)."""
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(others) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    for rank, i in enumerate(order):
        if suppressed[rank]:
            continue
        kept.append(int(i))
        if len(kept) >= MAX_DETECTIONS:
            break
        rest = order[rank + 1 :]
        overlap = (iou(boxes[i], boxes[rest]) > NMS_IOU) & (classes[rest] == classes[i])
        suppressed[rank + 1 :] |= overlap
    return np.array(kept, dtype=np.int64)


def match(reference: tuple, candidate: tuple) -> int:
    """How many reference detections have a same-class candidate at IoU >= MATCH_IOU (each used once)."""
    ref_boxes, ref_scores, ref_classes = reference
    cand_boxes, _, cand_classes = candidate
    used = np.zeros(len(cand_boxes), dtype=bool)
    matched = 0
    for i in np.argsort(-ref_scores, kind="stable"):
        if not len(cand_boxes):
            break
        overlaps = iou(ref_boxes[i], cand_boxes)
        overlaps[(cand_classes != ref_classes[i]) | used] = -1.0
        j = int(np.argmax(overlaps))
        if overlaps[j] >= MATCH_IOU:
            used[j] = True
            matched += 1
    return matched
