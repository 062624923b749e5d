"""From a plain snapshot of the timeline to worker jobs and back: which frames, which seconds, which files.

No bpy: snapshot.py copies what is needed out of Blender on the main thread, the job thread uses this module.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

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
    face_choice: str | dict = "speaker"  # the video strip's face choice (face_choice.face_option_for)


@dataclass(frozen=True)
class Clip:
    start: int  # timeline frames, end exclusive
    end: int
    src_start: int  # source-file frames
    src_end: int
    audio_start: float  # seconds into the audio file at `start`
    output: str  # absolute path of the result file


def visible_source_range(snap: Snapshot) -> tuple[int, int]:
    return tl.source_range(snap.video.timing, *snap.video.timing.visible)


def segments_job(snap: Snapshot) -> dict:
    s, e = visible_source_range(snap)
    return {"command": "segments", "video": snap.video.path, "start_frame": s, "end_frame": e,
            "options": {"detector": snap.options.get("detector", "auto"), "device": snap.device,
                        "min_segment_seconds": snap.options.get("min_segment_seconds", 0.5),
                        **face_options(snap.face_choice)}}


def face_options(choice) -> dict:
    """A clip's face_choice as the job options `face` / `face_at` (what the segments job takes)."""
    if isinstance(choice, dict):
        return {"face_at": list(choice["point"])}
    return {"face": choice}


def face_label(row: dict) -> str:
    """What a detected face segment lip-syncs among several faces, for its marker: "speaker, left of 2",
    "largest: no sound, right of 2", "point, left of 3"; "" with one face or none."""
    faces, k = row.get("faces"), row.get("chosen")
    if not faces or k is None or not 0 <= k < len(faces):
        return ""
    kind = str(row.get("choice") or "").split(" ")[0]
    if row.get("fallback"):
        kind = f"largest: {row['fallback']}"
    if len(faces) == 1:  # nothing to choose between: the marker stays "LS face"
        return ""
    centres = sorted((f["box"][0] + f["box"][2]) / 2 for f in faces)
    rank = centres.index((faces[k]["box"][0] + faces[k]["box"][2]) / 2)
    where = {0: "left"}.get(rank, "right" if rank == len(faces) - 1 else f"{rank + 1}th from left")
    return f"{kind}, {where} of {len(faces)}"


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
    labels = [face_label(r) for r in result["segments"]]
    rows = [(tl.timeline_frame(t, s), tl.timeline_frame(t, e), f, label)
            for (s, e, f), label in zip(detected_ranges(result), labels)]
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


def needs_detection(snap: Snapshot) -> bool:
    if snap.segment_source == "AUTO":
        return True
    if snap.segment_source == "MARKERS":
        return any(s.face is None for s in marker_segments(snap))
    return False


def audio_range(snap: Snapshot) -> tuple[int, int]:
    assert snap.audio is not None
    return snap.audio.timing.visible


def precheck(snap: Snapshot) -> None:
    """Cheap checks on the main thread before anything starts."""
    if snap.audio is not None and tl.intersect(snap.video.timing.visible, audio_range(snap)) is None:
        raise PlanError(f"The audio strip '{snap.audio.name}' does not lie under the video strip "
                        f"'{snap.video.name}' on the timeline; move it so they overlap.")
    if snap.segment_source == "MARKERS":
        segs = marker_segments(snap)
        if all(s.face is False for s in segs):
            raise PlanError("No face anywhere: every marker segment is marked 'LS no face'. Run Detect Segments "
                            "again or set Segments to Whole Strip.")


def no_face_message(snap: Snapshot) -> str:
    lo, hi = snap.video.timing.visible
    return (f"No face anywhere in '{snap.video.name}' (frames {lo}-{hi}): nothing to lip-sync. Check that the "
            "strip shows a face, or place markers around the face and set Segments to Markers.")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "clip"


def new_job_dir(snap: Snapshot) -> Path:
    """A fresh folder per job, so a cancelled job's files can be removed without touching others."""
    stem = _safe(Path(snap.video.path).stem)
    base = Path(snap.out_dir) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def sync_clips(snap: Snapshot, segments: list[TimelineSegment], job_dir: Path) -> list[Clip]:
    """Face segments, cut to where the audio strip plays, -> clips with source frames and audio seconds."""
    assert snap.audio is not None
    clips: list[Clip] = []
    stem = _safe(Path(snap.video.path).stem)
    for seg in segments:
        if not seg.face:
            continue
        rng = tl.intersect((seg.start, seg.end), audio_range(snap))
        if rng is None:
            continue
        s, e = rng
        src_s, src_e = tl.source_range(snap.video.timing, s, e)
        clips.append(Clip(s, e, src_s, src_e, round(tl.sound_seconds(snap.audio.timing, s, snap.fps), 6),
                          str(job_dir / f"{stem}_{s}-{e}.mp4")))
    if not clips:
        if not any(seg.face for seg in segments):
            raise PlanError(no_face_message(snap))
        raise PlanError(f"The audio strip '{snap.audio.name}' does not lie under any segment with a face; "
                        "move it under the face segments.")
    return clips


def sync_job(snap: Snapshot, clips: list[Clip]) -> dict:
    assert snap.audio is not None
    return {
        "command": "sync", "video": snap.video.path, "audio": snap.audio.path, "checkpoint": snap.checkpoint,
        "clips": [{"start_frame": c.src_start, "end_frame": c.src_end, "audio_start": c.audio_start,
                   "output": c.output, "face": True, "face_choice": snap.face_choice} for c in clips],
        "options": {"pads": list(snap.pads), "blend": snap.blend.lower(), "device": snap.device,
                    "batch_size": snap.options.get("batch_size"), "detector": snap.options.get("detector", "auto"),
                    "smooth": True, "box": None},
    }


def missing_outputs(clips: list[Clip]) -> list[str]:
    return [c.output for c in clips if not os.path.isfile(c.output)]
