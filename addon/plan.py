"""From a plain snapshot of the timeline to worker jobs and back: which frames, which seconds, which files.

No bpy: snapshot.py copies what is needed out of Blender on the main thread, the job thread uses this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import timeline as tl
from .timeline import TimelineSegment, Timing


class PlanError(Exception):
    """Bad input: the message says what to do; the timeline is left as it is."""


@dataclass(frozen=True)
class StripRef:
    name: str
    kind: str  # 'MOVIE' or 'SOUND'
    path: str  # absolute
    channel: int
    timing: Timing
    fps: float | None = None  # movies only


@dataclass(frozen=True)
class Snapshot:
    scene: str
    fps: float
    video: StripRef
    audio: StripRef | None
    markers: tuple[tuple[int, str], ...]
    segment_source: str = "MARKERS"  # MARKERS | AUTO | STRIP
    blend: str = "FEATHER"
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)
    python: str = ""
    checkpoint: str = ""
    device: str = "auto"
    out_dir: str = ""
    relative_paths: bool = False  # results placed with paths relative to the .blend (it was saved at the start)
    cache_dir: str = ""  # the engine's detection cache
    options: dict = field(default_factory=dict)


def visible_source_range(snap: Snapshot) -> tuple[int, int]:
    return tl.source_range(snap.video.timing, *snap.video.timing.visible)


def segments_job(snap: Snapshot) -> dict:
    s, e = visible_source_range(snap)
    return {"command": "segments", "video": snap.video.path, "start_frame": s, "end_frame": e,
            "options": {"detector": snap.options.get("detector", "auto"), "device": snap.device,
                        "min_segment_seconds": snap.options.get("min_segment_seconds", 0.5)}}


def detected_ranges(result: dict) -> list[tuple[int, int, bool]]:
    """The worker's segments result -> (src_start, src_end, face) rows.

    Exactly the contract's keys (docs/CONTRACTS.md): `start_frame`, `end_frame` (source frames, end exclusive)
    and `face`. Anything else means engine and add-on do not match; guessing would misplace every marker.
    """
    rows = result.get("segments")
    if not isinstance(rows, list):
        raise PlanError("The engine's answer has no segments; engine and add-on do not match, reinstall the add-on.")
    out = []
    for r in rows:
        try:
            start, end, face = r["start_frame"], r["end_frame"], r["face"]
            if not isinstance(face, bool):
                raise TypeError("face")
            out.append((int(start), int(end), face))
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"The engine's segment {r!r} lacks start_frame, end_frame or face ({exc}); engine and "
                            "add-on do not match, reinstall the add-on.") from exc
    return out


def detected_segments(snap: Snapshot, result: dict) -> list[TimelineSegment]:
    """Detection result -> segments in timeline frames covering the video strip's visible range exactly."""
    t = snap.video.timing
    rows = [(tl.timeline_frame(t, s), tl.timeline_frame(t, e), f) for s, e, f in detected_ranges(result)]
    return tl.cover(rows, *t.visible)


def marker_segments(snap: Snapshot) -> list[TimelineSegment]:
    lo, hi = snap.video.timing.visible
    segs = tl.segments_from_markers(list(snap.markers), lo, hi)
    if not segs:
        inside = tl.markers_in_range(list(snap.markers), lo, hi)
        raise PlanError(
            f"Segments come from markers, but {len(inside)} marker(s) lie inside the video strip "
            f"'{snap.video.name}' (frames {lo}-{hi}): a segment needs a pair of markers inside it. Add markers "
            "(M) inside the strip, run Detect Segments, or set Segments to Auto or Whole Strip.")
    return segs


def no_face_message(snap: Snapshot) -> str:
    lo, hi = snap.video.timing.visible
    return (f"No face anywhere in '{snap.video.name}' (frames {lo}-{hi}): nothing to lip-sync. Check that the "
            "strip shows a face, or place markers around the face and set Segments to Markers.")
