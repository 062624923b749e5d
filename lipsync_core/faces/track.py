"""Follow one face through a video, and turn the track into Wav2Lip crop boxes.

`track_faces` runs a detector on (optionally downscaled) frames, keeps ONE face (picked by `select` on the
first detection, then matched frame to frame by overlap), and returns a `FaceTrack` in original pixels.
With `detect_every=k` only keyframes (k or more frames apart) are detected, near the followed face where the
detector can do that cheaply; optical flow follows the face between them, and where a keyframe disagrees
(a face appeared, vanished, or is not where the flow put it) more frames between are detected, halving the
stretch, so face/no-face boundaries stay exact. A frame is called faceless next to a face (up to
CONFIRM_WINDOW frames after or before one) only where the detector, run on that whole frame, finds no face
there: keyframes alone would let a face the detector misses now and then (a tilted head, glasses) look gone
for frames in which it is seen. `face_boxes` bridges short gaps, pads, clips and smooths like Wav2Lip's
inference.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import LipsyncError
from ..progress import CancelToken, Progress

SELECT_MODES = ("largest", "left", "right", "center")
PREDICT_IOU = 0.85  # a keyframe this close to where the optical flow put the face confirms the frames between
WIDEN_IOU = 0.9  # ... and this close, the next keyframe may be further away
CONFIRM_WINDOW = 25  # frames next to a face that are called faceless only where the detector finds no face
NOFACE_MAX_EVERY = 12  # frames between keyframes with no face: about the shortest face segment (0.5 s at 25 fps)
MOTION_FACE = 40  # face side (px) in the small grey frames optical flow runs on
MOTION_GRID = 7  # points per side of the grid followed on the face
MATCH_IOU = 0.2  # a detection overlapping the followed face this much is that face
MATCH_CENTRE = 0.5  # ... or one whose centre moved less than half the face's size
LOST_PATIENCE = 25  # frames to wait for the followed face before another face already in view may replace it
DEFAULT_MAX_GAP = 8  # frames: about a third of a second at 25 fps
SMOOTH_T = 5  # Wav2Lip's get_smoothened_boxes window
_LK_STOP = (3, 10, 0.03)  # cv2.TERM_CRITERIA_COUNT | EPS: 10 iterations or 0.03 px


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
    """Which detection is "our" face, frame after frame. Small state, copied to replay a stretch of frames."""

    def __init__(self, select: str, width: int, height: int) -> None:
        self.select, self.width, self.height = select, width, height
        self.box: np.ndarray | None = None  # last box of the followed face
        self.lost = 0  # frames since it was last seen
        # every detection of the last detected frame; a callable that detects them when that frame was only
        # searched near our face (needed only when our face goes missing, so fetched only then)
        self.prev: np.ndarray | Callable[[], np.ndarray] = np.zeros((0, 5), np.float32)
        self.same = False  # the last step found the face it was following (not a first pick or a takeover)

    def copy(self) -> _Follower:
        return copy.copy(self)

    def step(self, cands: np.ndarray, gap: int = 1, all_dets: Callable[[], np.ndarray] | None = None,
             expect: np.ndarray | None = None) -> np.ndarray | None:
        """The followed face's (5,) row in this detected frame, `gap` frames after the last one, or None.

        `all_dets`: given when `cands` are only the faces near the followed one; returns every face.
        `expect`: where the followed face should be now (its motion since it was seen), if known."""
        cands = np.asarray(cands, np.float32).reshape(-1, 5)
        chosen = None
        same = False
        if len(cands):
            if self.box is None:
                chosen = _pick(cands, self.select, self.width, self.height)
            else:
                match, pref = _matches(self.box if expect is None else expect, cands[:, :4])
                if match.any():
                    chosen, same = int(np.argmax(np.where(match, pref, -np.inf))), True
                elif self.lost + gap > LOST_PATIENCE:
                    chosen = _pick(cands, self.select, self.width, self.height)
                else:
                    # Our face is missing. A face that was already in view (the other person) must not take
                    # over on one missed detection; a face that just appeared (a cut) may.
                    prev = self.prev() if callable(self.prev) else self.prev
                    fresh = np.ones(len(cands), bool)
                    for p in prev[:, :4]:
                        fresh &= ~_matches(p, cands[:, :4])[0]
                    if fresh.any():
                        idx = np.flatnonzero(fresh)
                        chosen = int(idx[_pick(cands[idx], self.select, self.width, self.height)])
        self.prev = cands if all_dets is None else all_dets
        self.same = same
        if chosen is None:
            self.lost += gap
            if self.lost > LOST_PATIENCE:
                self.box = None
            return None
        self.box, self.lost = cands[chosen, :4].copy(), 0
        return cands[chosen]


class _Motion:
    """Frame-to-frame motion of the followed face (shift and scale), by pyramidal LK optical flow.

    A grid of points on the face is followed on small grey copies of the frames in which the face is about
    MOTION_FACE px: enough to follow a head, and cheap. Detector boxes between two keyframes then
    follow the real path of the head, not a straight line between the keyframes (heads nod and turn back).
    """

    def __init__(self) -> None:
        import cv2

        self._cv2 = cv2
        self._small: dict[int, tuple[int, np.ndarray]] = {}  # frame index -> (shrink factor, grey frame)
        # frame index t -> (box it was measured around, (dx, dy, scale) from frame t-1 to t, flow lost there)
        self._moves: dict[int, tuple[np.ndarray, np.ndarray, bool]] = {}

    def forget(self, before: int) -> None:
        for d in (self._small, self._moves):
            for i in [i for i in d if i < before]:
                del d[i]

    def _grey(self, i: int, frame: np.ndarray, n: int) -> np.ndarray:
        got = self._small.get(i)
        if got is None or got[0] != n:
            cv2 = self._cv2
            g = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
            if n > 1:
                # a whole shrink factor on a size it divides takes OpenCV's fast area path
                h, w = g.shape[0] // n, g.shape[1] // n
                g = cv2.resize(g[:h * n, :w * n], (w, h), interpolation=cv2.INTER_AREA)
            got = self._small[i] = (n, g)
        return got[1]

    def move(self, t: int, frames: dict, box: np.ndarray) -> np.ndarray:
        """(dx, dy, scale) of the face in `box` (frame t-1's pixels) from frame t-1 to frame t.

        Memoised per frame for boxes about the same place (another face, after a cut, is measured anew)."""
        box = np.asarray(box[:4], np.float64)
        got = self._moves.get(t)
        if got is not None and iou(got[0], box[None])[0] >= 0.5:
            return got[1]
        cv2 = self._cv2
        side = float(np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 1.0)))
        n = max(1, int(round(side / MOTION_FACE)))
        a, b = self._grey(t - 1, frames[t - 1], n), self._grey(t, frames[t], n)
        u = (np.arange(MOTION_GRID) + 0.5) / MOTION_GRID * 0.7 + 0.15  # the middle 70% of the box: face, not background
        gx = (box[0] + u * (box[2] - box[0])) / n
        gy = (box[1] + u * (box[3] - box[1])) / n
        p = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 1, 2).astype(np.float32)
        q, st, _ = cv2.calcOpticalFlowPyrLK(a, b, p, None, winSize=(9, 9), maxLevel=2, criteria=_LK_STOP)
        ok = st.reshape(-1) == 1
        move = np.array([0.0, 0.0, 1.0])
        keep = np.zeros(0, bool)
        if ok.any():
            p, q = p.reshape(-1, 2)[ok].astype(np.float64), q.reshape(-1, 2)[ok].astype(np.float64)
            d = q - p
            # points that slid off the face (background, an occluding hand) move unlike the rest: drop them
            keep = np.abs(d - np.median(d, 0)).max(1) <= 1.0
            if keep.sum() >= 4:
                p, q, d = p[keep], q[keep], d[keep]
                pc, qc = p - p.mean(0), q - q.mean(0)
                scale = np.sqrt((qc ** 2).sum() / max((pc ** 2).sum(), 1e-9))
                t_ = d.mean(0)
                move = np.array([t_[0] * n, t_[1] * n, float(np.clip(scale, 0.9, 1.1))])
        # most of the face did not move as one (a cut, a turn, a hand): the stretch is worth a closer look
        self._moves[t] = (box, move, bool(keep.sum() < MOTION_GRID ** 2 // 2))
        return move

    def lost(self, j1: int, j2: int) -> bool:
        """Whether the flow lost the face somewhere in frames j1+1..j2 (after chain() went over them)."""
        return any(self._moves[t][2] for t in range(j1 + 1, j2 + 1) if t in self._moves)

    def chain(self, box: np.ndarray, j1: int, j2: int, frames: dict) -> np.ndarray:
        """Boxes (j2-j1+1, 4) of frames j1..j2: `box` at j1 carried along by the face's motion."""
        out = np.empty((j2 - j1 + 1, 4), np.float64)
        b = out[0] = np.asarray(box[:4], np.float64)
        for t in range(j1 + 1, j2 + 1):
            dx, dy, s = self.move(t, frames, b)
            cx, cy = (b[0] + b[2]) / 2 + dx, (b[1] + b[3]) / 2 + dy
            hw, hh = (b[2] - b[0]) * s / 2, (b[3] - b[1]) * s / 2
            b = out[t - j1] = (cx - hw, cy - hh, cx + hw, cy + hh)
        return out


def _detect(detector, frames: Sequence[np.ndarray], batch_size: int, cancel: CancelToken | None) -> list:
    out: list = []
    for i in range(0, len(frames), batch_size):
        if cancel is not None:
            cancel.check()
        out.extend(detector.detect(frames[i:i + batch_size]))
    return out


# ----------------------------------------------------------------------------------------------- tracking


def track_faces(frames: Iterable[np.ndarray], detector, *, scale: float = 1.0, detect_every: int = 1,
                max_every: int | None = None, select: str = "largest", batch_size: int = 8,
                total: int | None = None, progress: Progress | None = None, cancel: CancelToken | None = None,
                original_size: tuple[int, int] | None = None) -> FaceTrack:
    """Detect and follow one face; boxes come back in original pixels (detected box / `scale`).

    `detect_every=1`: the detector runs on every whole frame (batches of `batch_size`). `detect_every=k > 1`:
    keyframes k frames apart (up to `max_every` while the face moves as predicted; default: the detector's
    `max_every`, else k). Between keyframes the face is followed by optical flow, and where a keyframe does
    not land where the flow predicted, or a face appears, vanishes or changes, the stretch is halved with
    more detections until it is explained, so face/no-face boundaries are exact. Frames without a face within
    CONFIRM_WINDOW frames of one are each detected whole (further from any face, no-face keyframes stay
    NOFACE_MAX_EVERY apart). Once a face is followed, a detector with `detect_near` searches only near it
    (the whole frame again when it finds nothing there).
    `frames` may be a generator: at most max_every + CONFIRM_WINDOW + 1 frames are held (k=1: batch_size).
    `scale` = detected frame width / original width. `original_size` = (width, height) of the original
    frames when rounding made `frame size / scale` ambiguous; otherwise it is derived.
    """
    if select not in SELECT_MODES:
        raise LipsyncError(f"Unknown face selection {select!r}: choose one of {', '.join(SELECT_MODES)}.")
    k = int(detect_every)
    if k < 1 or batch_size < 1 or not scale > 0:
        raise ValueError("detect_every and batch_size must be >= 1 and scale > 0")
    if max_every is None:
        max_every = getattr(detector, "max_every", None) or k
    progress = progress or Progress()
    progress.start("detect", total)
    try:
        if k == 1:
            rows, shape = _track_every(frames, detector, select, batch_size, progress, cancel)
        else:
            rows, shape = _Sparse(detector, select, k, max(k, int(max_every)), batch_size, progress,
                                  cancel).run(frames)
    finally:
        progress.finish("detect")

    boxes, scores = rows[:, :4], rows[:, 4]
    if original_size is not None:
        width, height = original_size
    elif shape is not None:
        width, height = round(shape[1] / scale), round(shape[0] / scale)
    else:
        width = height = 0
    # 1/64 px and 1/1024 steps are exact binary fractions: short in JSON, identical after a cache round trip
    boxes = np.round(boxes / np.float32(scale) * 64) / 64
    return FaceTrack(boxes, np.round(scores * 1024) / 1024, width, height)


def _check_shape(f: np.ndarray, shape: tuple | None, i: int) -> tuple:
    if shape is not None and f.shape != shape:
        raise ValueError(f"frame {i} is {f.shape}, earlier frames were {shape}")
    return f.shape


def _track_every(frames, detector, select, batch_size, progress, cancel) -> tuple[np.ndarray, tuple | None]:
    """The reference: every whole frame detected, in batches."""
    out, chunk, shape, follower, n = [], [], None, None, 0
    it = iter(frames)
    while True:
        f = next(it, None)
        if f is not None:
            shape = _check_shape(f, shape, n)
            follower = follower or _Follower(select, f.shape[1], f.shape[0])
            chunk.append(f)
            n += 1
        if chunk and (f is None or len(chunk) == batch_size):
            for d in _detect(detector, chunk, batch_size, cancel):
                row = follower.step(d)
                out.append(np.full(5, np.nan, np.float32) if row is None else row)
            progress.advance("detect", len(chunk))
            chunk = []
        if f is None:
            break
    return (np.array(out, np.float32).reshape(-1, 5)), shape


class _Sparse:
    """Keyframes, optical flow between them, and halving where the two disagree (see track_faces)."""

    def __init__(self, detector, select: str, k: int, max_every: int, batch_size: int, progress: Progress,
                 cancel: CancelToken | None) -> None:
        self.detector, self.select, self.k, self.max_every = detector, select, k, max_every
        self.near = getattr(detector, "detect_near", None)
        self.batch_size, self.progress, self.cancel = batch_size, progress, cancel
        # the frames from CONFIRM_WINDOW before the last keyframe on, and whole-frame detections of those
        self.frames: dict[int, np.ndarray] = {}
        self.full: dict[int, np.ndarray] = {}
        self.motion = _Motion()

    def _whole(self, j: int) -> np.ndarray:
        self._whole_many([j])
        return self.full[j]

    def _whole_many(self, js: Iterable[int]) -> None:
        todo = [j for j in js if j not in self.full]
        for j, d in zip(todo, _detect(self.detector, [self.frames[j] for j in todo], self.batch_size, self.cancel)):
            self.full[j] = np.asarray(d, np.float32).reshape(-1, 5)

    def _detect(self, j: int, hint: np.ndarray | None) -> tuple[np.ndarray, bool]:
        """Detections of frame j and whether they are complete (whole frame) or only near `hint`."""
        if hint is not None and self.near is not None:
            if self.cancel is not None:
                self.cancel.check()
            d = np.asarray(self.near([self.frames[j]], [hint])[0], np.float32).reshape(-1, 5)
            if len(d) and _matches(hint, d[:, :4])[0].any():
                return d, False
        return self._whole(j), True  # nothing there: the face left, or moved more than predicted

    def run(self, frames: Iterable[np.ndarray]) -> tuple[np.ndarray, tuple | None]:
        it = iter(frames)
        first = next(it, None)
        if first is None:
            return np.zeros((0, 5), np.float32), None
        shape = first.shape
        self.frames[0] = first
        follower = _Follower(self.select, shape[1], shape[0])
        a, ra = 0, follower.step(self._whole(0))
        out = [ra]
        self.progress.advance("detect", 1)
        n, g, ended = 1, self.k, False
        while True:
            while not ended and n <= a + g:  # read up to the next keyframe
                f = next(it, None)
                if f is None:
                    ended = True
                    break
                self.frames[n] = f
                shape = _check_shape(f, shape, n)
                n += 1
            b = min(a + g, n - 1)
            if b <= a:
                break
            rows, follower, split, fit = self._interval(a, ra, b, follower)
            out.extend(rows)
            self._look_back(out, a, b)
            self.progress.advance("detect", b - a)
            a, ra = b, rows[-1]
            # widen while the flow predicts keyframes well, narrow after a stretch needed halving; with no
            # face, stay at most NOFACE_MAX_EVERY apart so that no face shown that long is missed
            top = self.max_every if ra is not None else min(self.max_every, max(self.k, NOFACE_MAX_EVERY))
            if split:
                g = max(self.k, g // 2)
            elif fit >= WIDEN_IOU:
                g = min(top, g + self.k)
            else:
                g = min(top, g)
            for d in (self.frames, self.full):
                for j in [j for j in d if j < a - CONFIRM_WINDOW]:
                    del d[j]
            self.motion.forget(a)
        rows = np.array([np.full(5, np.nan, np.float32) if r is None else r for r in out], np.float32)
        return rows.reshape(-1, 5), shape

    def _interval(self, a: int, ra: np.ndarray | None, b: int, follower: _Follower):
        """Rows of frames a+1..b, the follower after b, whether halving was needed, the flow's fit at b."""
        frames, motion = self.frames, self.motion
        hint = None if ra is None else motion.chain(ra, a, b, frames)[-1]
        dets = {b: self._detect(b, hint)}
        split, fit = False, 1.0
        while True:
            # replay the follower over the detected frames in order (a halving adds frames in between)
            fol, rows, same, last = follower.copy(), {a: ra}, {}, a
            near_face = {a: follower.box is not None}  # a face was seen at most LOST_PATIENCE frames before
            for j in sorted(dets):
                d, complete = dets[j]
                # with keyframes far apart, "the same face" means: where the flow carried it, not where it was
                r = rows[last]
                expect = None if r is None else motion.chain(r, last, j, frames)[-1]
                rows[j] = fol.step(d, j - last, None if complete else (lambda j=j: self._whole(j)), expect)
                same[j], last, near_face[j] = fol.same, j, fol.box is not None
            keys = sorted(rows)
            todo = fill = None
            for j1, j2 in zip(keys, keys[1:]):
                r1, r2 = rows[j1], rows[j2]
                if j2 - j1 < 2:
                    continue
                if r1 is None and r2 is None:
                    if near_face[j1]:
                        fill = (j1, j2)  # a face was just lost: the detector must confirm every frame
                        break
                    continue
                if r1 is None or r2 is None or not same[j2]:
                    todo = (j1, j2)  # a face appeared, vanished or changed in between: find where
                    break
                o = float(iou(motion.chain(r1, j1, j2, frames)[-1], r2[None, :4])[0])
                if j2 == b and j1 == a:
                    fit = o
                if o < PREDICT_IOU or motion.lost(j1, j2):
                    todo = (j1, j2)  # the flow lost the face's path (or the face): look in the middle
                    break
            if fill is not None:
                self._whole_many(range(fill[0] + 1, fill[1]))
                dets.update({j: (self.full[j], True) for j in range(fill[0] + 1, fill[1])})
                continue
            if todo is None:
                break
            j1, j2 = todo
            m = (j1 + j2) // 2
            r1 = rows[j1]
            dets[m] = self._detect(m, None if r1 is None else motion.chain(r1, j1, m, frames)[-1])
            split = True
        out = []
        for j1, j2 in zip(keys, keys[1:]):
            r1, r2 = rows[j1], rows[j2]
            if j2 - j1 > 1:
                if r1 is None or r2 is None:
                    out.extend([None] * (j2 - j1 - 1))
                else:
                    p = motion.chain(r1, j1, j2, frames)
                    w = (np.arange(1, j2 - j1) / (j2 - j1))[:, None]
                    # the flow's path, bent so that it ends on the detection (spreads the drift over the stretch)
                    boxes = p[1:-1] + w * (r2[:4] - p[-1])
                    scores = (1 - w) * r1[4] + w * r2[4]
                    out.extend(np.concatenate([boxes, scores], 1).astype(np.float32))
            out.append(r2)
        return out, fol, split, fit

    def _look_back(self, out: list, a: int, b: int) -> None:
        """Where a face appears in frames a+1..b after frames with no face, run the detector on each of the
        CONFIRM_WINDOW frames before it that keyframes skipped; those where it finds that face have it."""
        for t in range(a + 1, b + 1):
            if out[t] is None or out[t - 1] is not None:
                continue
            ref, j = t, t - 1
            while j >= 0 and out[j] is None and ref - j <= CONFIRM_WINDOW and j in self.frames:
                lo = j  # the faceless frames from j back to the window's start, detected as one batch
                while lo > max(0, ref - CONFIRM_WINDOW) and out[lo - 1] is None and lo - 1 in self.frames:
                    lo -= 1
                self._whole_many(range(lo, j + 1))
                for i in range(j, lo - 1, -1):
                    d = self.full[i]
                    match, pref = _matches(out[ref][:4], d[:, :4])
                    if match.any():
                        out[i], ref = d[int(np.argmax(np.where(match, pref, -np.inf)))], i
                j = lo - 1


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


# ----------------------------------------------------------------------------------------------- every face

ALL_FACES_EVERY = 10  # frames between detections when every face is followed (optical flow in between)
ALL_FACES_DISCOVER = 3  # ... every this many of those detect the whole frame (new faces); the rest look near


@dataclass
class FollowedFace:
    """One face followed from frame `start` on: `boxes` (L, 4) original pixels, `motion` (L,) its mouth's
    change from the frame before (NaN where not measured). It never jumps to another face: when it is lost
    for longer than LOST_PATIENCE frames it ends at the last frame it was seen."""

    start: int
    boxes: np.ndarray
    motion: np.ndarray

    @property
    def end(self) -> int:
        return self.start + len(self.boxes)

    def box_at(self, t: int) -> np.ndarray | None:
        if not self.start <= t < self.end:
            return None
        b = self.boxes[t - self.start]
        return None if np.isnan(b).any() else b

    def motion_in(self, start: int, end: int) -> np.ndarray:
        """Mouth motion per frame of [start, end), NaN outside this face's frames."""
        out = np.full(max(0, end - start), np.nan)
        a, b = max(start, self.start), min(end, self.end)
        if b > a:
            out[a - start:b - start] = self.motion[a - self.start:b - self.start]
        return out


@dataclass
class FaceSet:
    """Every face followed through a video (`follow_all_faces`), in original pixels."""

    faces: list
    frames: int
    width: int
    height: int

    def to_dict(self) -> dict:
        def nums(a):
            return [None if np.isnan(v) else float(v) for v in np.asarray(a, np.float64).reshape(-1)]

        return {"frames": self.frames, "width": self.width, "height": self.height,
                "faces": [{"start": f.start, "boxes": nums(f.boxes), "motion": nums(f.motion)} for f in self.faces]}

    @classmethod
    def from_dict(cls, d: dict) -> FaceSet:
        def arr(v):
            return np.array([np.nan if x is None else x for x in v], np.float32)

        faces = [FollowedFace(int(f["start"]), arr(f["boxes"]).reshape(-1, 4), arr(f["motion"])) for f in d["faces"]]
        return cls(faces, int(d["frames"]), int(d["width"]), int(d["height"]))


class AllFaces:
    """Follows every face of a frame stream: `feed(frame)` per frame, then `result()`.

    Every `every` frames (and on the last one) the detector looks near each followed face where the optical flow
    carried it; every ALL_FACES_DISCOVER-th time, when there is no face, or when a followed face is not found
    near where it should be, it looks at the whole frame, and detections that match no followed face start new
    ones. The boxes between two detections follow the flow, bent to end on the detection (as `track_faces`
    does). The
    mouth motion of each face is measured on the grey frames as the boxes become known, so frames are kept
    only from the oldest face still waiting to be seen again."""

    def __init__(self, detector, scale: float = 1.0, every: int = ALL_FACES_EVERY,
                 original_size: tuple[int, int] | None = None, cancel: CancelToken | None = None,
                 mouth: Callable | None = None) -> None:
        self.detector, self.scale, self.every, self.cancel = detector, float(scale), max(1, int(every)), cancel
        self.near = getattr(detector, "detect_near", None)
        self.original_size = original_size
        # mouth(prev_grey, grey, prev_box, box) -> float: the mouth measure (speaker.mouth_motion); None: NaN
        self._mouth = mouth or (lambda *_: float("nan"))
        self.n = 0
        self.greys: dict[int, np.ndarray] = {}
        self.motion = _Motion()
        self.shape: tuple | None = None
        self._last: np.ndarray | None = None  # the last colour frame (detected when the stream ends)
        self._last_key = -1
        # per face: start, box rows (analysis pixels), motion, last frame seen and its row
        self._faces: list[dict] = []

    def feed(self, frame: np.ndarray) -> None:
        import cv2

        i = self.n
        self.shape = _check_shape(frame, self.shape, i)
        self.greys[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        self.n += 1
        self._last = frame
        if i % self.every == 0:
            self._keyframe(i, frame)

    def _keyframe(self, j: int, frame: np.ndarray) -> None:
        if self.cancel is not None:
            self.cancel.check()
        self._last_key = j
        live = [f for f in self._faces if not f["ended"]]
        for f in live:  # where the flow carried each face since it was last seen
            f["path"] = self.motion.chain(f["row"], f["seen"], j, self.greys)
        whole = not live or self.near is None or (j // self.every) % ALL_FACES_DISCOVER == 0
        if not whole:
            dets = np.zeros((0, 5), np.float32)
            for f in live:  # a search near one face may have found the others already (same size, near)
                if not (len(dets) and _matches(f["path"][-1], dets[:, :4])[0].any()):
                    near = np.asarray(self.near([frame], [f["path"][-1]])[0], np.float32).reshape(-1, 5)
                    dets = np.concatenate([dets, near])
            dets = dets[nms_rows(dets)] if len(dets) > 1 else dets
            used = self._match(live, dets)
            whole = len(used) < len(live)  # a face is not where it should be: look at the whole frame
        if whole:
            dets = np.asarray(self.detector.detect([frame])[0], np.float32).reshape(-1, 5)
            used = self._match(live, dets)
            for d in range(len(dets)):  # faces that match no followed one are new
                if d not in used.values():
                    self._faces.append({"start": j, "rows": [dets[d, :4].astype(np.float64)], "motion": [np.nan],
                                        "seen": j, "row": dets[d, :4].astype(np.float64), "ended": False})
        for fi, f in enumerate(live):
            if fi in used:
                self._extend(f, j, dets[used[fi]])
            elif j - f["seen"] > LOST_PATIENCE:
                f["ended"] = True
        self._forget(j)

    def _match(self, live: list, dets: np.ndarray) -> dict:
        """{face index in live: detection index}: each face to the detection best matching where the flow put
        it, each detection used once."""
        pairs = []
        for fi, f in enumerate(live):
            if len(dets):
                match, pref = _matches(f["path"][-1], dets[:, :4])
                pairs += [(float(pref[d]), fi, d) for d in np.flatnonzero(match)]
        used: dict = {}
        for _, fi, d in sorted(pairs, key=lambda p: -p[0]):
            if fi not in used and d not in used.values():
                used[fi] = d
        return used

    def _forget(self, j: int) -> None:
        keep = min([j] + [f["seen"] for f in self._faces if not f["ended"]])
        for i in [i for i in self.greys if i < keep]:
            del self.greys[i]
        self.motion.forget(keep)

    def _extend(self, f: dict, j: int, det: np.ndarray) -> None:
        """Rows of frames seen+1..j for face f, now seen again at keyframe j as `det` (f["path"]: the flow's)."""
        a = f["seen"]
        p = f["path"]
        w = (np.arange(1, j - a + 1) / (j - a))[:, None]
        rows = p[1:] + w * (det[:4] - p[-1])
        rows[-1] = det[:4]
        prev = f["row"]
        for t, r in zip(range(a + 1, j + 1), rows):
            f["rows"].append(r)
            f["motion"].append(self._mouth(self.greys[t - 1], self.greys[t], prev, r))
            prev = r
        f["seen"], f["row"] = j, np.asarray(det[:4], np.float64)

    def result(self) -> FaceSet:
        if self._last is not None and self._last_key != self.n - 1:
            self._keyframe(self.n - 1, self._last)
        if self.original_size is not None:
            width, height = self.original_size
        elif self.shape is not None:
            width, height = round(self.shape[1] / self.scale), round(self.shape[0] / self.scale)
        else:
            width = height = 0
        faces = []
        for f in self._faces:
            boxes = np.round(np.array(f["rows"], np.float64) / self.scale * 64) / 64
            faces.append(FollowedFace(f["start"], boxes.astype(np.float32),
                                      np.array(f["motion"], np.float32)))
        return FaceSet(faces, self.n, width, height)


def nms_rows(dets: np.ndarray, overlap: float = 0.5) -> np.ndarray:
    """Indices of detections kept when those overlapping a better-scored one by `overlap` IoU are dropped
    (the same face found by two searches)."""
    keep: list[int] = []
    for i in np.argsort(-dets[:, 4]):
        if all(iou(dets[k, :4], dets[i:i + 1, :4])[0] < overlap for k in keep):
            keep.append(int(i))
    return np.array(sorted(keep), int)


def follow_all_faces(frames: Iterable[np.ndarray], detector, *, scale: float = 1.0, every: int = ALL_FACES_EVERY,
                     original_size: tuple[int, int] | None = None, cancel: CancelToken | None = None,
                     mouth: Callable | None = None) -> FaceSet:
    """Every face of `frames` followed (see AllFaces); boxes in original pixels (detected / `scale`)."""
    follower = AllFaces(detector, scale, every, original_size, cancel, mouth)
    for f in frames:
        follower.feed(f)
    return follower.result()
