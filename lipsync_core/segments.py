"""Face / no-face segments of a clip: where lip-sync applies and where the source passes through untouched.

Segments are frame ranges [start_frame, end_frame) that cover the clip with alternating `face` flags.
They come from face detection (`segments_from_presence`) or from ranges an editor wrote down (`parse_ranges`).
"""

from __future__ import annotations

import heapq
import math
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import LipsyncError


@dataclass(frozen=True)
class Segment:
    start_frame: int
    end_frame: int  # exclusive
    face: bool
    fps: float | None = field(default=None, compare=False)

    @property
    def frames(self) -> int:
        return self.end_frame - self.start_frame

    @property
    def start(self) -> float:
        """Start in seconds (needs fps)."""
        return self.start_frame / self._fps()

    @property
    def end(self) -> float:
        """End in seconds, exclusive (needs fps)."""
        return self.end_frame / self._fps()

    def _fps(self) -> float:
        if not self.fps:
            raise ValueError("this Segment has no fps; build it with fps=... to get seconds")
        return self.fps


def all_face(n: int, fps: float | None = None) -> list[Segment]:
    """The whole clip as one face segment (nothing when it has no frames)."""
    return [Segment(0, int(n), True, fps)] if n > 0 else []


def _segments(flags: list[bool], lengths: list[int], fps: float | None) -> list[Segment]:
    out, pos = [], 0
    for f, n in zip(flags, lengths):
        out.append(Segment(pos, pos + n, bool(f), fps))
        pos += n
    return out


def segments_from_presence(has_face, min_frames: int = 1, max_gap: int = 0, fps: float | None = None
                           ) -> list[Segment]:
    """Segments covering [0, N) from a per-frame face flag.

    No-face gaps of at most `max_gap` frames between faces become face; then runs shorter than `min_frames`
    are merged into their neighbours, shortest first, until none is left (or one segment remains).
    """
    has = np.asarray(has_face, bool).reshape(-1)
    n = len(has)
    if n == 0:
        return []
    # run-length encode
    change = np.flatnonzero(np.diff(has.astype(np.int8))) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [n]])).tolist()
    flags = has[starts].tolist()

    if max_gap > 0:  # bridge inner gaps: a no-face run with a face run on both sides
        for i in range(1, len(flags) - 1):
            if not flags[i] and lengths[i] <= max_gap:
                flags[i] = True
        flags, lengths = _coalesce(flags, lengths)

    if min_frames > 1 and len(flags) > 1:
        flags, lengths = _merge_short(flags, lengths, int(min_frames))
    return _segments(flags, lengths, fps)


def _coalesce(flags: list[bool], lengths: list[int]) -> tuple[list[bool], list[int]]:
    f2: list[bool] = []
    l2: list[int] = []
    for f, n in zip(flags, lengths):
        if f2 and f2[-1] == f:
            l2[-1] += n
        else:
            f2.append(f)
            l2.append(n)
    return f2, l2


def _merge_short(flags: list[bool], lengths: list[int], min_frames: int) -> tuple[list[bool], list[int]]:
    """Flip the shortest run below `min_frames` (it joins both neighbours) until none is left. O(R log R)."""
    r = len(flags)
    length = list(lengths)
    flag = list(flags)
    prev = list(range(-1, r - 1))
    nxt = list(range(1, r + 1))
    alive = [True] * r
    heap = [(length[i], i) for i in range(r) if length[i] < min_frames]
    heapq.heapify(heap)
    count = r
    while heap and count > 1:
        ln, i = heapq.heappop(heap)
        if not alive[i] or ln != length[i] or length[i] >= min_frames:
            continue  # stale entry
        # absorb this run and its neighbours (same flag after the flip) into one run at index i
        flag[i] = not flag[i]
        for j in (prev[i], nxt[i]):
            if 0 <= j < r and alive[j]:
                length[i] += length[j]
                alive[j] = False
                count -= 1
                if j == prev[i]:
                    prev[i] = prev[j]
                    if prev[j] >= 0:
                        nxt[prev[j]] = i
                else:
                    nxt[i] = nxt[j]
                    if nxt[j] < r:
                        prev[nxt[j]] = i
        if length[i] < min_frames:
            heapq.heappush(heap, (length[i], i))
    keep = [i for i in range(r) if alive[i]]
    # walk in order (indices stay ordered: a merged run keeps the middle index)
    return _coalesce([flag[i] for i in keep], [length[i] for i in keep])


# ----------------------------------------------------------------------------------------------- ranges

_TIME = r"(?:\d+:){0,2}\d+(?:\.\d*)?|\.\d+"
_RANGE = re.compile(rf"^\s*({_TIME})\s*[-\u2013\u2014]\s*({_TIME})\s*$")


def _seconds(text: str) -> float:
    """'12.5' -> 12.5, '1:02.5' -> 62.5, '1:00:00' -> 3600."""
    parts = text.split(":")
    value = 0.0
    for p in parts[:-1]:
        value = value * 60 + int(p)
    return value * 60 + float(parts[-1]) if len(parts) > 1 else float(parts[-1])


def _fmt(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + " s"


def parse_ranges(text: str, fps: float, n_frames: int) -> list[Segment]:
    """Face ranges written as seconds, 'START-END' pairs separated by commas ('1.5-3.25, 31-60' or
    '0:31-1:00'), to segments covering the clip: face where given, no-face in between.

    Times are rounded to the nearest frame; END is where the face part stops (exclusive).
    """
    if not fps or fps <= 0 or n_frames <= 0:
        raise LipsyncError("The clip has no frames (or no frame rate), so face ranges cannot be applied.")
    duration = n_frames / fps
    example = "write them like '1.5-3.25, 31-60' (seconds) or '0:31-1:00' (minutes:seconds)"
    pieces = [p for p in re.split(r"[,;\n]", text or "") if p.strip()]
    if not pieces:
        raise LipsyncError(f"No face ranges given: {example}.")
    spans = []
    for piece in pieces:
        m = _RANGE.match(piece)
        if not m:
            raise LipsyncError(f"Cannot read the face range {piece.strip()!r}: {example}.")
        a, b = _seconds(m.group(1)), _seconds(m.group(2))
        label = piece.strip()
        if b <= a:
            raise LipsyncError(f"The face range {label!r} ends before it starts: write START-END.")
        s, e = math.floor(a * fps + 0.5), math.floor(b * fps + 0.5)
        if e > n_frames:
            raise LipsyncError(f"The face range {label!r} goes past the end of the clip, which is "
                               f"{_fmt(duration)} long ({n_frames} frames at {fps:g} fps).")
        if e <= s:
            raise LipsyncError(f"The face range {label!r} is shorter than one frame at {fps:g} fps.")
        spans.append((a, b, s, e, label))
    spans.sort(key=lambda x: (x[0], x[1]))
    merged: list[list[int]] = []
    for i, (a, _b, s, e, label) in enumerate(spans):
        if i and a < spans[i - 1][1]:
            raise LipsyncError(f"The face ranges {spans[i - 1][4]!r} and {label!r} overlap: "
                               "give each part of the clip once.")
        if merged and s <= merged[-1][1]:  # touching after rounding: one face run
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out, pos = [], 0
    for s, e in merged:
        if s > pos:
            out.append(Segment(pos, s, False, fps))
        out.append(Segment(s, e, True, fps))
        pos = e
    if pos < n_frames:
        out.append(Segment(pos, n_frames, False, fps))
    return out


def segments_to_dict(segments: list[Segment], fps: float, frames: int) -> dict:
    """{"fps", "frames", "segments": [{"start_frame", "end_frame", "start", "end", "face"}, ...]} (JSON-ready)."""
    fps = float(fps)
    return {
        "fps": fps,
        "frames": int(frames),
        "segments": [
            {"start_frame": int(s.start_frame), "end_frame": int(s.end_frame),
             "start": s.start_frame / fps, "end": s.end_frame / fps, "face": bool(s.face)}
            for s in segments
        ],
    }
