"""Pure timeline maths: frames <-> source frames/seconds, occupied ranges, free channels, marker segments.

No bpy here, so all of it is unit-tested without Blender. Ranges are half-open [start, end) in frames.
The mappings below were checked against Blender 5.0.1 itself (render and mixdown; see tests/test_addon_blender.py):
  movie: source frame   = timeline frame - frame_start + animation_offset_start
  sound: source seconds = (timeline frame - frame_start + animation_offset_start) / fps - sound_offset
frame_offset_start/end (the trims) only hide part of the content; they do not shift it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

MARKER_PREFIX = "LS "
MARKER_FACE = "LS face"
MARKER_NOFACE = "LS no face"
MARKER_END = "LS end"
MAX_CHANNEL = 128


@dataclass(frozen=True)
class Timing:
    """The timing fields of a strip, copied out of bpy."""

    frame_start: float  # where the content's first frame sits on the timeline
    final_start: int  # first visible frame
    final_end: int  # one past the last visible frame
    animation_offset_start: float = 0.0  # content frames cut off the file's start (hold offset)
    sound_offset: float = 0.0  # seconds; positive delays the sound

    @property
    def visible(self) -> tuple[int, int]:
        return (self.final_start, self.final_end)


def scene_fps(fps: int, fps_base: float) -> float:
    return fps / fps_base


def fps_matches(a: float, b: float) -> bool:
    # 30000/1001 vs 29.97 and the like must match; 25 vs 24 must not.
    return abs(a - b) < 1e-3 * max(a, b, 1.0)


def source_frame(t: Timing, frame: int) -> int:
    return round(frame - t.frame_start + t.animation_offset_start)


def timeline_frame(t: Timing, src: int) -> int:
    return round(src + t.frame_start - t.animation_offset_start)


def source_range(t: Timing, start: int, end: int) -> tuple[int, int]:
    """Timeline range -> source-file frame range (end exclusive)."""
    return source_frame(t, start), source_frame(t, end)


def sound_seconds(t: Timing, frame: int, fps: float) -> float:
    """Seconds into the sound file that play at timeline `frame` (negative: before the file starts)."""
    return (frame - t.frame_start + t.animation_offset_start) / fps - t.sound_offset


def intersect(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int] | None:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo < hi else None


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return intersect(a, b) is not None


def occupied_ranges(strips: list[tuple[int, int, int]], channel: int) -> list[tuple[int, int]]:
    """Merged, sorted visible ranges of `strips` ((channel, start, end) rows) on one channel."""
    ranges = sorted((s, e) for c, s, e in strips if c == channel and s < e)
    merged: list[tuple[int, int]] = []
    for s, e in ranges:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def first_free_channel(strips: list[tuple[int, int, int]], above: int,
                       ranges: list[tuple[int, int]], max_channel: int = MAX_CHANNEL) -> int | None:
    """Lowest channel > `above` where none of `ranges` overlaps a strip; None when all are taken."""
    for ch in range(above + 1, max_channel + 1):
        taken = occupied_ranges(strips, ch)
        if not any(overlaps(r, t) for r in ranges for t in taken):
            return ch
    return None


@dataclass(frozen=True)
class TimelineSegment:
    start: int  # timeline frames, end exclusive
    end: int
    face: bool | None  # None: not known yet (markers placed by hand)
    label: str = field(default="", compare=False)  # which face a detected face segment lip-syncs (its marker)

    @property
    def length(self) -> int:
        return self.end - self.start


def face_from_marker_name(name: str) -> bool | None:
    if name == MARKER_FACE or name.startswith(MARKER_FACE + " ("):  # "LS face (speaker, left of 2)"
        return True
    if name == MARKER_NOFACE:
        return False
    return None


def markers_in_range(markers: list[tuple[int, str]], lo: int, hi: int) -> list[tuple[int, str]]:
    """Markers at lo..hi inclusive (a marker on the strip's end frame closes its last segment)."""
    return sorted((f, n) for f, n in markers if lo <= f <= hi)


def segments_from_markers(markers: list[tuple[int, str]], lo: int, hi: int) -> list[TimelineSegment]:
    """Consecutive marker pairs inside [lo, hi] -> segments; face status from our own marker names."""
    inside = markers_in_range(markers, lo, hi)
    segs: list[TimelineSegment] = []
    for (f0, name), (f1, _) in pairwise(inside):
        if f1 > f0:
            segs.append(TimelineSegment(f0, f1, face_from_marker_name(name)))
    return segs


def markers_for_segments(segments: list[TimelineSegment]) -> list[tuple[int, str]]:
    """One marker at each segment start saying which side has a face, plus one at the last end."""
    out = [(s.start, (f"{MARKER_FACE} ({s.label})" if s.label else MARKER_FACE) if s.face else MARKER_NOFACE)
           for s in segments]
    if segments:
        out.append((segments[-1].end, MARKER_END))
    return out


def is_own_marker(name: str) -> bool:
    return name.startswith(MARKER_PREFIX)


def cover(ranges: list[tuple], lo: int, hi: int) -> list[TimelineSegment]:
    """Face/no-face ranges (start, end, face[, label]; any order, gaps allowed) -> segments covering [lo, hi)
    exactly.

    Gaps count as no face; neighbours with the same status (and label: which face they lip-sync) are merged.
    """
    segs: list[TimelineSegment] = []

    def push(s: int, e: int, face: bool, label: str = "") -> None:
        if e <= s:
            return
        if segs and segs[-1].face == face and segs[-1].end == s and segs[-1].label == label:
            segs[-1] = TimelineSegment(segs[-1].start, e, face, label)
        else:
            segs.append(TimelineSegment(s, e, face, label))

    pos = lo
    for s, e, face, *label in sorted(ranges):
        s, e = max(s, lo), min(e, hi)
        if e <= pos:
            continue
        s = max(s, pos)
        push(pos, s, False)
        push(s, e, bool(face), label[0] if label and face else "")
        pos = e
    push(pos, hi, False)
    return segs


def face_fraction(seg: TimelineSegment, face_ranges: list[tuple[int, int]]) -> float:
    """Fraction of seg's frames inside any of face_ranges (assumed not to overlap each other)."""
    if seg.length <= 0:
        return 0.0
    covered = sum(max(0, min(seg.end, e) - max(seg.start, s)) for s, e in face_ranges)
    return covered / seg.length


def label_segments(segments: list[TimelineSegment], face_ranges: list[tuple[int, int]],
                   min_fraction: float = 0.5) -> list[TimelineSegment]:
    """Fill in face status where it is unknown: a face on at least `min_fraction` of the segment's frames."""
    return [s if s.face is not None else TimelineSegment(s.start, s.end, face_fraction(s, face_ranges) >= min_fraction)
            for s in segments]

