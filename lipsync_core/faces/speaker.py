"""Which face to lip-sync in a face segment: the one that speaks, one the editor points at, or a rule.

The speaker is found from the clip's OWN sound (the dialogue recorded with the picture): the mouth of the
person talking moves with the loudness of that sound. Per followed face (`track.FaceSet`), the mouth motion
(mean absolute change of the lower-middle part of the face box between frames, on a patch of fixed size, so
it does not depend on the face's size) is correlated with the sound's loudness per frame (log RMS of the
pre-emphasised samples in each frame's span), over lags of up to MAX_LAG frames either way. The best-matching
face wins when its score is at least MIN_SCORE and beats the next one by MIN_MARGIN; otherwise, and when the
clip has no sound, the largest face is taken and the caller warns once.

No model: numpy and OpenCV on the frames the analysis pass decodes anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import LipsyncError

RULES = ("largest", "left", "right", "center")
CHOICES = ("speaker", *RULES)
MOUTH_X = (0.25, 0.75)  # the mouth's part of a face box, as fractions of its width ...
MOUTH_Y = (0.6, 1.0)  # ... and height (detector boxes end at or just below the chin)
PATCH = (32, 16)  # mouth patch size (w, h) the motion is measured on
MAX_LAG = 3  # frames the mouth may lead or trail the sound (video/audio offsets, the mouth opening early)
MIN_SCORE = 0.15  # a correlation below this is not evidence that a face speaks
MIN_MARGIN = 0.1  # ... and the winner must beat the next face by this much
MIN_FRAMES = 20  # frames of overlap between mouth and sound needed to score a face
SWITCH_SECONDS = 2.0  # a change of speaker splits a face segment when each side is at least this long ...
SWITCH_LEAD = 0.3  # ... and on each side the winner leads by this much (short stretches give noisy scores)


@dataclass(frozen=True)
class FaceChoice:
    """How to pick the face of a segment: `mode` in CHOICES or "point" (then `point` = (x, y) source pixels)."""

    mode: str = "largest"
    point: tuple[float, float] | None = None

    def __str__(self) -> str:
        return f"point {self.point[0]:g} {self.point[1]:g}" if self.mode == "point" else self.mode

    @property
    def needs_all_faces(self) -> bool:
        return self.mode in ("speaker", "point")


def parse_choice(value, point=None) -> FaceChoice:
    """A FaceChoice from the option forms: "speaker" | "largest" | "left" | "right" | "center" |
    {"point": [x, y]} | [x, y]; `point` (the --face-at pair) overrides `value`."""
    if point is not None:
        value = {"point": point}
    if isinstance(value, FaceChoice):
        return value
    if isinstance(value, dict) and set(value) == {"point"}:
        value = value["point"]
    if isinstance(value, (list, tuple)):
        try:
            x, y = (float(v) for v in value)
        except (TypeError, ValueError):
            raise LipsyncError(f"a face point needs two numbers X Y (source pixels), got {value!r}") from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise LipsyncError(f"a face point needs two finite numbers X Y (source pixels), got {value!r}")
        return FaceChoice("point", (x, y))
    if isinstance(value, str) and value.strip().lower() in CHOICES:
        return FaceChoice(value.strip().lower())
    raise LipsyncError(f"unknown face choice {value!r}: use one of {', '.join(CHOICES)}, or a point "
                       '{"point": [X, Y]} in source pixels (--face-at X Y)')


# --------------------------------------------------------------------------------------------- signals


def mouth_patch(grey: np.ndarray, box) -> np.ndarray | None:
    """The mouth part of `box` (x1, y1, x2, y2 in `grey`'s pixels) resized to PATCH, float32; None if empty."""
    import cv2

    x1, y1, x2, y2 = (float(v) for v in box[:4])
    w, h = x2 - x1, y2 - y1
    h_img, w_img = grey.shape[:2]
    a = int(max(0, np.floor(x1 + MOUTH_X[0] * w)))
    b = int(min(w_img, np.ceil(x1 + MOUTH_X[1] * w)))
    c = int(max(0, np.floor(y1 + MOUTH_Y[0] * h)))
    d = int(min(h_img, np.ceil(y1 + MOUTH_Y[1] * h)))
    if b - a < 2 or d - c < 2:
        return None
    return cv2.resize(grey[c:d, a:b], PATCH, interpolation=cv2.INTER_AREA).astype(np.float32)


def mouth_motion(prev_grey: np.ndarray, grey: np.ndarray, prev_box, box) -> float:
    """How much the mouth changed from one frame to the next (each patch cut at its own frame's box, so a
    head that moves as a whole changes it little). NaN where a patch is empty."""
    p, q = mouth_patch(prev_grey, prev_box), mouth_patch(grey, box)
    if p is None or q is None:
        return float("nan")
    return float(np.abs(q - p).mean())


def loudness(wav: np.ndarray, sr: int, fps: float, n: int) -> np.ndarray:
    """Log RMS per video frame (n frames from the first sample) of the pre-emphasised sound (speech, not hum)."""
    wav = np.asarray(wav, np.float32)
    x = np.concatenate([wav[:1], wav[1:] - 0.97 * wav[:-1]]) if len(wav) else wav
    edges = np.round(np.arange(n + 1) * sr / fps).astype(np.int64)
    out = np.full(n, np.nan)
    for i in range(n):
        seg = x[edges[i]:edges[i + 1]]
        if len(seg):
            out[i] = np.log(np.sqrt(np.mean(seg.astype(np.float64) ** 2)) + 1e-4)
    return out


def _smooth3(x: np.ndarray) -> np.ndarray:
    """A 3-frame mean that ignores NaN (a frame's change and its neighbours': one mouth movement spans them)."""
    if len(x) == 0:
        return x.astype(np.float64)
    v = np.where(np.isnan(x), 0.0, x)
    w = (~np.isnan(x)).astype(np.float64)
    k = np.ones(3)
    # the centred part of the full convolution ("same" is as long as the kernel when x is shorter: 1-2 frames)
    num, den = np.convolve(v, k)[1 : len(x) + 1], np.convolve(w, k)[1 : len(x) + 1]
    return np.where(w > 0, num / np.maximum(den, 1e-9), np.nan)


def sync_score(motion: np.ndarray, sound: np.ndarray, max_lag: int = MAX_LAG) -> tuple[float, int] | None:
    """Best Pearson correlation of mouth motion with loudness over lags -max_lag..max_lag (frames; positive:
    the mouth trails the sound), and that lag; None with too little overlap or no variation to compare."""
    m, s = _smooth3(np.asarray(motion, np.float64)), _smooth3(np.asarray(sound, np.float64))
    n = min(len(m), len(s))
    best = None
    for lag in range(-max_lag, max_lag + 1):
        a = m[max(0, lag):n + min(0, lag)]
        b = s[max(0, -lag):n + min(0, -lag)]
        ok = ~(np.isnan(a) | np.isnan(b))
        if ok.sum() < MIN_FRAMES:
            continue
        a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        if den <= 1e-12:
            continue
        r = float((a * b).sum() / den)
        if best is None or r > best[0]:
            best = (r, lag)
    return best


# --------------------------------------------------------------------------------------------- choosing


@dataclass
class SegmentChoice:
    """The face chosen for one face segment, and the evidence (the JSON report's `faces` / `chosen`)."""

    start_frame: int
    end_frame: int
    choice: str  # what was asked: speaker, largest, left, right, center, point X Y
    faces: list[dict] = field(default_factory=list)  # {"box": at the first face frame, "score", "lag"} per face
    chosen: int | None = None  # index into faces; None: no face in the segment
    fallback: str | None = None  # why the rule "largest" decided instead of the sound

    def to_dict(self) -> dict:
        return {"start_frame": self.start_frame, "end_frame": self.end_frame, "choice": self.choice,
                "faces": self.faces, "chosen": self.chosen, "fallback": self.fallback}


def pick_by_rule(boxes: np.ndarray, rule: str, width: int, height: int) -> int:
    """Index of the face a rule picks among (K, 4) boxes."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    if rule == "largest":
        return int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    if rule == "left":
        return int(np.argmin(cx))
    if rule == "right":
        return int(np.argmax(cx))
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return int(np.argmin(np.hypot(cx - width / 2, cy - height / 2)))


def pick_by_point(boxes: np.ndarray, point: Sequence[float]) -> int:
    """The face whose box is nearest the point (0 inside it; ties: the nearest centre)."""
    x, y = float(point[0]), float(point[1])
    dx = np.maximum(np.maximum(boxes[:, 0] - x, x - boxes[:, 2]), 0)
    dy = np.maximum(np.maximum(boxes[:, 1] - y, y - boxes[:, 3]), 0)
    centre = np.hypot((boxes[:, 0] + boxes[:, 2]) / 2 - x, (boxes[:, 1] + boxes[:, 3]) / 2 - y)
    return int(np.lexsort((centre, np.hypot(dx, dy)))[0])


def choose_in_segment(faces: list, start: int, end: int, choice: FaceChoice, width: int, height: int,
                      sound: Callable[[int, int], np.ndarray | None] | None,
                      switch_frames: int = 50) -> tuple[SegmentChoice, int | None]:
    """Pick a face for frames [start, end) among `faces` (track.FollowedFace) alive at the segment's first face
    frame. Returns the report and the chosen face's index into `faces` (None: no face in the segment).
    `sound(start, end)`: the clip's own loudness per frame of that range, or None when it has no sound.
    For the speaker, where another face clearly speaks from some frame on (each side at least `switch_frames`
    long), the report's end_frame is that frame: the rest is the next segment's choice."""
    report = SegmentChoice(start, end, str(choice))
    first = None
    for t in range(start, end):
        if any(f.box_at(t) is not None for f in faces):
            first = t
            break
    if first is None:
        return report, None
    alive = [i for i, f in enumerate(faces) if f.box_at(first) is not None]
    boxes = np.array([faces[i].box_at(first) for i in alive], np.float64)
    report.faces = [{"box": [round(float(v), 1) for v in b]} for b in boxes]
    if choice.mode == "point":
        k = pick_by_point(boxes, choice.point)
    elif choice.mode in RULES:
        k = pick_by_rule(boxes, choice.mode, width, height)
    else:
        k = _by_speech(faces, alive, first, end, sound, report, switch_frames)
        if k is None:
            k = pick_by_rule(boxes, "largest", width, height)
    report.chosen = k
    return report, alive[k]


def _winner(motions: list, loud: np.ndarray) -> tuple[int | None, list, float]:
    """(index of the clear winner or None, (score, lag) or None per face, winner's lead over the next face)."""
    got = [sync_score(m, loud) for m in motions]
    scores = [-np.inf if g is None else g[0] for g in got]
    order = np.argsort(scores)[::-1]
    best = scores[order[0]]
    second = scores[order[1]] if len(order) > 1 else -np.inf
    lead = best - second if np.isfinite(second) else best
    if not np.isfinite(best) or best < MIN_SCORE or (np.isfinite(second) and lead < MIN_MARGIN):
        return None, got, 0.0
    return int(order[0]), got, float(lead)


def _speaker_change(motions: list, loud: np.ndarray, switch_frames: int) -> int | None:
    """Offset where one face clearly speaks before and another clearly after (the split with the largest
    combined lead), or None. Candidate splits every few frames: cheap next to decoding."""
    n = len(loud)
    if len(motions) < 2 or n < 2 * switch_frames:
        return None
    best, at = 0.0, None
    for t in range(switch_frames, n - switch_frames + 1, max(2, n // 200)):
        left, _, lead_l = _winner([m[:t] for m in motions], loud[:t])
        right, _, lead_r = _winner([m[t:] for m in motions], loud[t:])
        if (left is not None and right is not None and left != right and min(lead_l, lead_r) >= SWITCH_LEAD
                and lead_l + lead_r > best):
            best, at = lead_l + lead_r, t
    return at


def _by_speech(faces, alive, first, end, sound, report: SegmentChoice, switch_frames: int) -> int | None:
    loud = sound(first, end) if sound is not None else None
    if loud is None:
        report.fallback = "no sound"
        return None
    motions = [faces[i].motion_in(first, end) for i in alive]
    cut = _speaker_change(motions, loud, switch_frames)
    if cut is not None:  # another person speaks from `cut` on: this choice covers the frames before
        report.end_frame = first + cut
        motions, loud = [m[:cut] for m in motions], loud[:cut]
    k, got, _ = _winner(motions, loud)
    for j, g in enumerate(got):
        report.faces[j]["score"] = None if g is None else round(g[0], 3)
        report.faces[j]["lag"] = None if g is None else g[1]
    if k is None:
        # one face with a poor score is still the only face: it is the choice, but the report says so
        report.fallback = "no clear speaker"
    return k


def choose_faces(segments: list, base: np.ndarray, faceset, choice: FaceChoice,
                 sound: Callable[[int, int], np.ndarray | None] | None,
                 switch_frames: int = 50) -> tuple[list, np.ndarray, list[SegmentChoice]]:
    """Pick and follow one face per face segment.

    segments: `segments.Segment`s; base: (N, 4) boxes of the one-face track (NaN rows: none), which follows the
    largest face with the detector's confirmations and is used wherever it is on the chosen face; faceset:
    `track.FaceSet`. When the chosen face leaves the frame, its face segment ends there and the rest of the
    segment is a new face segment with its own choice (never a jump to another face inside one); so is the rest
    of a segment in which another person clearly speaks from some frame on (`switch_frames`: the least length
    on each side of such a change).
    Returns (segments, split where a chosen face left; boxes (N, 4) of the chosen faces, NaN elsewhere;
    one SegmentChoice per face segment)."""
    from ..segments import Segment
    from .track import iou, iou_rows

    base = np.asarray(base, np.float64)
    rows = np.full_like(base, np.nan)
    out, reports = [], []
    for seg in segments:
        if not seg.face:
            out.append(seg)
            continue
        pos, end_seg = seg.start_frame, seg.end_frame
        while pos < end_seg:
            report, fi = choose_in_segment(faceset.faces, pos, end_seg, choice, faceset.width, faceset.height, sound,
                                           switch_frames)
            if fi is None:  # no face followed here: the one-face track decides (as without a choice)
                rows[pos:end_seg] = base[pos:end_seg]
                out.append(Segment(pos, end_seg, True, seg.fps))
                reports.append(report)
                break
            face = faceset.faces[fi]
            first = next(t for t in range(pos, end_seg) if face.box_at(t) is not None)
            end = min(report.end_frame, face.end)
            mine = np.asarray(face.boxes[first - face.start:end - face.start], np.float64)
            theirs = base[first:end]
            with np.errstate(invalid="ignore"):
                same = iou_rows(mine, theirs) >= 0.3
            rows[first:end] = np.where(same[:, None], theirs, mine)
            # frames before the followed face's first detection, and after its last one (it is detected only every
            # few frames), that the one-face track has on the same face: its face / no-face changes are exact
            for t in range(first - 1, pos - 1, -1):
                if np.isnan(base[t]).any() or iou(rows[t + 1], base[t][None])[0] < 0.3:
                    break
                rows[t] = base[t]
            while end < report.end_frame and not np.isnan(base[end]).any() \
                    and iou(rows[end - 1], base[end][None])[0] >= 0.3:
                rows[end] = base[end]
                end += 1
            report.end_frame = end
            out.append(Segment(pos, end, True, seg.fps))
            reports.append(report)
            pos = end
    return out, rows, reports


def fallback_warning(reports: list[SegmentChoice]) -> str | None:
    """One warning for every face segment where the speaker could not be told from the sound, or None."""
    fell = [r for r in reports if r.fallback]
    if not fell:
        return None
    why = sorted({r.fallback for r in fell})
    spans = ", ".join(f"{r.start_frame}-{r.end_frame}" for r in fell[:5]) + (" ..." if len(fell) > 5 else "")
    reason = ("the clip has no sound of its own" if why == ["no sound"] else
              "no face's mouth follows the clip's own sound clearly" if why == ["no clear speaker"] else
              "no sound or no clear speaker")
    return (f"warning: --face speaker: {reason} in {len(fell)} face segment(s) (frames {spans}): the largest face "
            "was lip-synced there. Pick the face with --face-at X Y (or Largest / Left / Right) if that is wrong.")
