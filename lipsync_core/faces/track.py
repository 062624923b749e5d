"""Follow one face through a video, and turn the track into Wav2Lip crop boxes.

`track_faces` runs a detector on (optionally downscaled) frames, keeps ONE face (picked by `select` on the
first detection, then matched frame to frame by overlap), and returns a `FaceTrack` in original pixels.
With `detect_every=k` only every k-th frame is detected; frames between two keyframes that show the same
face are interpolated, and where the keyframes disagree every frame between them is detected, so face/no-face
boundaries stay exact. `face_boxes` bridges short gaps, pads, clips and smooths like Wav2Lip's inference.py.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import LipsyncError
from ..progress import CancelToken, Progress

SELECT_MODES = ("largest", "left", "right", "center")
AGREE_IOU = 0.7  # keyframes this similar are "the same face, moving smoothly": interpolate between them
MATCH_IOU = 0.2  # a detection overlapping the followed face this much is that face
MATCH_CENTRE = 0.5  # ... or one whose centre moved less than half the face's size
LOST_PATIENCE = 25  # frames to wait for the followed face before another face already in view may replace it
DEFAULT_MAX_GAP = 8  # frames: about a third of a second at 25 fps
SMOOTH_T = 5  # Wav2Lip's get_smoothened_boxes window


@dataclass
class FaceTrack:
    """One face per frame in ORIGINAL video pixels: `boxes` (N, 4) x1,y1,x2,y2 float32, NaN rows where none."""

    boxes: np.ndarray
    scores: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        if len(self.scores) != len(self.boxes):
            raise ValueError(f"{len(self.boxes)} boxes but {len(self.scores)} scores")
        self.width, self.height = int(self.width), int(self.height)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def has_face(self) -> np.ndarray:
        return ~np.isnan(self.boxes).any(axis=1)

    def to_dict(self) -> dict:
        """JSON-safe and exact: rows with no face are null (JSON has no NaN), numbers are the float32 values."""
        has = self.has_face.tolist()
        boxes = self.boxes.astype(np.float64).tolist()
        scores = self.scores.astype(np.float64).tolist()
        return {
            "width": self.width,
            "height": self.height,
            "boxes": [b if h else None for b, h in zip(boxes, has)],
            "scores": [s if h else None for s, h in zip(scores, has)],
        }

    @classmethod
    def from_dict(cls, d: dict) -> FaceTrack:
        boxes = np.array([[np.nan] * 4 if b is None else b for b in d["boxes"]], np.float32).reshape(-1, 4)
        scores = np.array([np.nan if s is None else s for s in d["scores"]], np.float32)
        return cls(boxes, scores, d["width"], d["height"])


# ----------------------------------------------------------------------------------------------- geometry


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1,y1,x2,y2 box with each of (K, 4) boxes (continuous coordinates)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def iou_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (N, 4) arrays (NaN rows give NaN)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.maximum(union, 1e-9)


def _matches(box: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is the same face?, preference) of each candidate for a followed `box`."""
    o = iou(box, boxes)
    size = np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 1e-9))
    d = np.hypot((boxes[:, 0] + boxes[:, 2] - box[0] - box[2]) / 2,
                 (boxes[:, 1] + boxes[:, 3] - box[1] - box[3]) / 2) / size
    return (o >= MATCH_IOU) | (d <= MATCH_CENTRE), o - 0.05 * d


def _pick(cands: np.ndarray, select: str, width: int, height: int) -> int:
    cx = (cands[:, 0] + cands[:, 2]) / 2
    if select == "largest":
        return int(np.argmax((cands[:, 2] - cands[:, 0]) * (cands[:, 3] - cands[:, 1])))
    if select == "left":
        return int(np.argmin(cx))
    if select == "right":
        return int(np.argmax(cx))
    cy = (cands[:, 1] + cands[:, 3]) / 2
    return int(np.argmin(np.hypot(cx - width / 2, cy - height / 2)))


class _Follower:
    """Which detection is "our" face, frame after frame. Small state, copied to try a keyframe jump."""

    def __init__(self, select: str, width: int, height: int) -> None:
        self.select, self.width, self.height = select, width, height
        self.box: np.ndarray | None = None  # last box of the followed face
        self.lost = 0  # frames since it was last seen
        self.prev = np.zeros((0, 5), np.float32)  # every detection of the last detected frame

    def copy(self) -> _Follower:
        return copy.copy(self)

    def step(self, cands: np.ndarray, gap: int = 1) -> np.ndarray | None:
        """The followed face's (5,) row in this detected frame, `gap` frames after the last one, or None."""
        cands = np.asarray(cands, np.float32).reshape(-1, 5)
        chosen = None
        if len(cands):
            if self.box is None:
                chosen = _pick(cands, self.select, self.width, self.height)
            else:
                same, pref = _matches(self.box, cands[:, :4])
                if same.any():
                    chosen = int(np.argmax(np.where(same, pref, -np.inf)))
                elif self.lost + gap > LOST_PATIENCE:
                    chosen = _pick(cands, self.select, self.width, self.height)
                else:
                    # Our face is missing. A face that was already in view (the other person) must not take
                    # over on one missed detection; a face that just appeared (a cut) may.
                    fresh = np.ones(len(cands), bool)
                    for p in self.prev[:, :4]:
                        fresh &= ~_matches(p, cands[:, :4])[0]
                    if fresh.any():
                        idx = np.flatnonzero(fresh)
                        chosen = int(idx[_pick(cands[idx], self.select, self.width, self.height)])
        self.prev = cands
        if chosen is None:
            self.lost += gap
            if self.lost > LOST_PATIENCE:
                self.box = None
            return None
        self.box, self.lost = cands[chosen, :4].copy(), 0
        return cands[chosen]


def _agree(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return float(iou(a[:4].astype(np.float64), b[None, :4])[0]) >= AGREE_IOU


def _detect(detector, frames: Sequence[np.ndarray], batch_size: int, cancel: CancelToken | None) -> list:
    out: list = []
    for i in range(0, len(frames), batch_size):
        if cancel is not None:
            cancel.check()
        out.extend(detector.detect(frames[i:i + batch_size]))
    return out


# ----------------------------------------------------------------------------------------------- tracking


def track_faces(frames: Iterable[np.ndarray], detector, *, scale: float = 1.0, detect_every: int = 1,
                select: str = "largest", batch_size: int = 8, total: int | None = None,
                progress: Progress | None = None, cancel: CancelToken | None = None,
                original_size: tuple[int, int] | None = None) -> FaceTrack:
    """Detect and follow one face; boxes come back in original pixels (detected box / `scale`).

    `frames` may be a generator (streamed: at most `batch_size * detect_every` frames are held, so a producer
    must not overwrite a frame it has yielded).
    `scale` = detected frame width / original width. `original_size` = (width, height) of the original
    frames when rounding made `frame size / scale` ambiguous; otherwise it is derived.
    """
    if select not in SELECT_MODES:
        raise LipsyncError(f"Unknown face selection {select!r}: choose one of {', '.join(SELECT_MODES)}.")
    k = int(detect_every)
    if k < 1 or batch_size < 1 or not scale > 0:
        raise ValueError("detect_every and batch_size must be >= 1 and scale > 0")
    progress = progress or Progress()
    it = iter(frames)
    shape = None
    follower: _Follower | None = None
    anchor: tuple[int, np.ndarray | None] | None = None  # last keyframe resolved: (index, its row)
    out_boxes: list[np.ndarray] = []
    out_scores: list[np.ndarray] = []
    n = 0
    progress.start("detect", total)
    try:
        exhausted = False
        while not exhausted:
            # Read until batch_size keyframes are buffered; a chunk always ends on a keyframe.
            n0, chunk, keys = n, [], 0
            while keys < batch_size:
                f = next(it, None)
                if f is None:
                    exhausted = True
                    break
                if shape is None:
                    shape = f.shape
                    follower = _Follower(select, f.shape[1], f.shape[0])
                elif f.shape != shape:
                    raise ValueError(f"frame {n} is {f.shape}, earlier frames were {shape}")
                chunk.append(f)
                keys += n % k == 0
                n += 1
            if not chunk:
                break
            key_idx = list(range(n0 + (-n0) % k, n, k))
            if not key_idx or key_idx[-1] != n - 1:
                key_idx.append(n - 1)  # the stream ended between keyframes: its last frame is one

            rows = np.full((n - n0, 5), np.nan, np.float32)
            key_dets = _detect(detector, [chunk[i - n0] for i in key_idx], batch_size, cancel)
            for ki, dets in zip(key_idx, key_dets):
                if anchor is None:
                    row = follower.step(dets)
                else:
                    a, arow = anchor
                    between = range(a + 1, ki)
                    trial = follower.copy()
                    row = trial.step(dets, ki - a)
                    if len(between) == 0 or _agree(arow, row):
                        follower = trial
                        if row is not None and len(between):
                            t = ((np.arange(a + 1, ki) - a) / (ki - a))[:, None]
                            rows[a + 1 - n0:ki - n0] = (1 - t) * arow + t * row
                    else:
                        # face appeared, vanished or jumped: detect every frame between for exact boundaries
                        dets_between = _detect(detector, [chunk[j - n0] for j in between], batch_size, cancel)
                        for j, d in zip(between, dets_between):
                            r = follower.step(d)
                            if r is not None:
                                rows[j - n0] = r
                        row = follower.step(dets)
                if row is not None:
                    rows[ki - n0] = row
                anchor = (ki, row)
            out_boxes.append(rows[:, :4])
            out_scores.append(rows[:, 4])
            progress.advance("detect", n - n0)
    finally:
        progress.finish("detect")

    boxes = np.concatenate(out_boxes) if out_boxes else np.zeros((0, 4), np.float32)
    scores = np.concatenate(out_scores) if out_scores else np.zeros(0, np.float32)
    if original_size is not None:
        width, height = original_size
    elif shape is not None:
        width, height = round(shape[1] / scale), round(shape[0] / scale)
    else:
        width = height = 0
    # 1/64 px and 1/1024 steps are exact binary fractions: short in JSON, identical after a cache round trip
    boxes = np.round(boxes / np.float32(scale) * 64) / 64
    return FaceTrack(boxes, np.round(scores * 1024) / 1024, width, height)


# ----------------------------------------------------------------------------------------------- crop boxes


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends (exclusive) of the True runs of a bool array."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def bridge_gaps(boxes: np.ndarray, max_gap: int) -> np.ndarray:
    """Fill runs of NaN rows of at most `max_gap` frames that have a face on both sides, linearly."""
    boxes = np.array(boxes, np.float64)
    has = ~np.isnan(boxes).any(axis=1)
    n = len(boxes)
    if n == 0 or has.all() or not has.any() or max_gap <= 0:
        return boxes
    idx = np.arange(n)
    prev = np.maximum.accumulate(np.where(has, idx, -1))
    nxt = np.minimum.accumulate(np.where(has, idx, n)[::-1])[::-1]
    fill = ~has & (prev >= 0) & (nxt < n) & (nxt - prev - 1 <= max_gap)
    if fill.any():
        p, q = prev[fill], nxt[fill]
        t = ((idx[fill] - p) / (q - p))[:, None]
        boxes[fill] = (1 - t) * boxes[p] + t * boxes[q]
    return boxes


def smooth_boxes(boxes: np.ndarray, T: int = SMOOTH_T) -> np.ndarray:
    """Wav2Lip's get_smoothened_boxes on an int (n, 4) array, vectorised, same result.

    box[i] = mean(boxes[i:i+T]) truncated to int (the reference writes into its int array in place); for the
    last T-1 boxes the window is the last T boxes, which by then include already-smoothed ones. Runs shorter
    than T use the mean of the whole run (the reference's negative slice start would pick a few last boxes).
    """
    b = np.asarray(boxes, np.int64)
    n = len(b)
    if n == 0:
        return b.copy()
    if n < T:
        return np.broadcast_to(np.trunc(b.mean(axis=0)), b.shape).astype(np.int64)
    out = b.copy()
    c = np.concatenate([np.zeros((1, 4), np.int64), np.cumsum(b, axis=0)])
    head = n - T + 1  # windows that lie inside the array read only not-yet-smoothed boxes
    out[:head] = np.trunc((c[T:T + head] - c[:head]) / T)
    for i in range(head, n):  # at most T-1 boxes
        out[i] = np.trunc(out[n - T:].mean(axis=0))
    return out


def face_boxes(track: FaceTrack, pads: Sequence[int] = (0, 10, 0, 0), smooth: bool = True,
               max_gap: int | None = None) -> np.ndarray:
    """Crop boxes: int32 (N, 4) x1, y1, x2, y2 per frame in original pixels, -1 rows where no face.

    Order as Wav2Lip's inference.py: box clipped at 0 and truncated to int, padded (top, bottom, left,
    right) and clipped to the frame, then smoothed, here within each contiguous face run only. Gaps of up
    to `max_gap` frames (default 8) between two faces are first bridged by interpolation.
    """
    top, bottom, left, right = (int(p) for p in pads)
    boxes = bridge_gaps(track.boxes, DEFAULT_MAX_GAP if max_gap is None else int(max_gap))
    has = ~np.isnan(boxes).any(axis=1)
    out = np.full((len(boxes), 4), -1, np.int64)
    if not has.any():
        return out.astype(np.int32)
    b = np.trunc(np.clip(boxes[has], 0, None)).astype(np.int64)
    b[:, 0] = np.maximum(0, b[:, 0] - left)
    b[:, 1] = np.maximum(0, b[:, 1] - top)
    b[:, 2] = np.minimum(track.width, b[:, 2] + right)
    b[:, 3] = np.minimum(track.height, b[:, 3] + bottom)
    out[has] = b
    if smooth:
        for s, e in zip(*_runs(has)):
            out[s:e] = smooth_boxes(out[s:e])
    return out.astype(np.int32)


def fixed_boxes(n: int, box: Sequence[int], width: int, height: int) -> np.ndarray:
    """The same user-given box (`--box X1 Y1 X2 Y2`, original pixels) for `n` frames, validated."""
    try:
        x1, y1, x2, y2 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise LipsyncError(f"--box needs four whole numbers X1 Y1 X2 Y2, got {box!r}.") from None
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise LipsyncError(
            f"--box {x1} {y1} {x2} {y2} does not fit the {width}x{height} frame: it needs "
            f"0 <= X1 < X2 <= {width} and 0 <= Y1 < Y2 <= {height} (pixels, top-left origin).")
    return np.tile(np.array([x1, y1, x2, y2], np.int32), (int(n), 1))
