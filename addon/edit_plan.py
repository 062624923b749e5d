"""The edit as plain data: which cuts to sync, what dub plays under each, which of them changed, the one job.

No bpy: snapshot.py copies the cuts and dub strips out of Blender on the main thread; this module turns them
into one worker job (docs/CONTRACTS.md, the edit form of `sync`) and back. A cut's content key covers every
input of its result (source file and range, the dub parts under it, segments, checkpoint, options): a result
file named after the key is reused instead of being made again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import timeline as tl
from .plan import PlanError, detected_ranges, face_label
from .timeline import Timing

KEY_VERSION = 1  # bump when the engine's output for the same inputs changes: every result is made again once


@dataclass(frozen=True)
class DubRef:
    name: str
    path: str  # absolute
    timing: Timing
    volume: float
    volumes: tuple[float, ...] = ()  # keyframed: the volume at each frame of the visible range


@dataclass(frozen=True)
class CutRef:
    name: str
    path: str  # the source file: the original even when the strip shows a Lip Sync result now
    timing: Timing  # the strip's timing on the source file (see snapshot.source_timing)
    fps: float  # the source's, as Blender read it
    shown: str  # the file the strip shows now (absolute)
    markers: tuple[tuple[int, str], ...] = ()  # scene markers inside the cut's visible range
    face_choice: object = "speaker"  # which face it lip-syncs (face_choice.face_option_for): a name or {"point"}


@dataclass(frozen=True)
class EditSnapshot:
    scene: str
    fps: float
    cuts: tuple[CutRef, ...]
    dubs: dict  # cut name -> tuple[DubRef, ...]: what plays under it
    segment_source: str = "MARKERS"
    blend: str = "FEATHER"
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)
    python: str = ""
    checkpoint: str = ""
    device: str = "auto"
    out_dir: str = ""
    relative_paths: bool = False
    cache_dir: str = ""
    options: dict | None = None  # extra engine options (the encoder's), passed through


@dataclass(frozen=True)
class CutPlan:
    cut: str  # strip name
    video: str
    start_frame: int  # source frames, end exclusive: the cut's visible range
    end_frame: int
    timeline: tuple[int, int]  # the visible range on the timeline
    dub: tuple[dict, ...]  # {"file", "from", "at", "seconds", "volume"}
    dub_ranges: tuple[tuple[int, int], ...]  # timeline ranges where a dub strip plays over the cut
    segments: object  # "auto" | "all" | [{"start_frame", "end_frame", "face"}]
    key: str
    output: str  # the result's final path (named after the key)
    face_choice: object = "speaker"

    def job_clip(self, output: str) -> dict:
        return {"video": self.video, "start_frame": self.start_frame, "end_frame": self.end_frame,
                "output": output, "segments": self.segments, "dub": [dict(d) for d in self.dub],
                "sync_ranges": [list(r) for r in self.source_dub_ranges], "face_choice": self.face_choice}

    @property
    def source_dub_ranges(self) -> list[tuple[int, int]]:
        return [(self.start_frame + a - self.timeline[0], self.start_frame + b - self.timeline[0])
                for a, b in self.dub_ranges]


# the file a result is written as, per encoding (the engine's CODECS: the first extension of each)
RESULT_EXTENSIONS = {"h264": ".mp4", "prores": ".mov", "ffv1": ".mkv"}


def engine_options(snap: EditSnapshot) -> dict:
    # exact_size: a result replaces its cut's movie, so it must have the movie's exact size (an odd one is written
    # in full chroma rather than padded)
    return {"pads": list(snap.pads), "blend": snap.blend.lower(), "device": snap.device,
            "detector": "auto", "smooth": True, "box": None, "exact_size": True, **(snap.options or {})}


def _identity(path: str) -> list:
    """What says a file is the same one: its size and modification time (no reading: presses stay fast)."""
    st = os.stat(path)
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns]


def _key_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in ("device", "batch_size")}


def content_key(video: str, rng: tuple[int, int], segments, dub: list[dict], sync_ranges, checkpoint: str,
                options: dict) -> str:
    made_from = {"version": KEY_VERSION, "video": _identity(video), "frames": list(rng), "segments": segments,
                 "dub": [{**d, "file": _identity(d["file"])} for d in dub], "sync_ranges": sync_ranges,
                 "checkpoint": _identity(checkpoint), "options": _key_options(options)}
    text = json.dumps(made_from, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def dub_parts(cut: CutRef, dubs: tuple[DubRef, ...], fps: float) -> tuple[list[dict], list[tuple[int, int]]]:
    """The dub strips' sound over the cut's visible range: parts for the engine's mix, and the timeline ranges."""
    lo, hi = cut.timing.visible
    parts, ranges = [], []
    for d in dubs:
        rng = tl.intersect((lo, hi), d.timing.visible)
        if rng is None or (d.volume == 0 and not d.volumes):
            continue
        a, b = rng
        first = d.timing.visible[0]
        volume = ([round(float(v), 6) for v in d.volumes[a - first : b - first]] if d.volumes
                  else round(float(d.volume), 6))
        if d.volumes and not any(volume):
            continue  # faded out over the whole cut
        parts.append({"file": d.path, "from": round(tl.sound_seconds(d.timing, a, fps), 6),
                      "at": round((a - lo) / fps, 6), "seconds": round((b - a) / fps, 6), "volume": volume})
        ranges.append(rng)
    return parts, merge_ranges(ranges)


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def cut_segments(snap: EditSnapshot, cut: CutRef):
    """The engine's segment spec for a cut, in source frames; raises PlanError (one line) when markers are
    asked for and the cut holds no pair of them."""
    if snap.segment_source == "STRIP":
        return "all"
    if snap.segment_source == "AUTO":
        return "auto"
    lo, hi = cut.timing.visible
    segs = tl.segments_from_markers(list(cut.markers), lo, hi)
    if not segs:
        raise PlanError(f"'{cut.name}': Segments come from markers, but {len(cut.markers)} marker(s) lie inside it "
                        f"(frames {lo}-{hi}): a segment needs a pair of markers inside it. Add markers (M), run "
                        "Detect Segments, or set Segments to Auto or Whole Strip")
    if all(s.face is False for s in segs):
        raise PlanError(f"'{cut.name}': No face anywhere: every marker segment inside it is marked 'LS no face'; "
                        "run Detect Segments again or set Segments to Whole Strip")
    return [{"start_frame": tl.source_frame(cut.timing, s.start), "end_frame": tl.source_frame(cut.timing, s.end),
             "face": s.face} for s in segs]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "clip"


def plan_cuts(snap: EditSnapshot) -> list[CutPlan]:
    """Every cut's plan; all problems together in one PlanError (nothing runs)."""
    problems, plans = [], []
    options = engine_options(snap)
    for cut in snap.cuts:
        try:
            parts, ranges = dub_parts(cut, snap.dubs.get(cut.name, ()), snap.fps)
            if not parts:
                raise PlanError(f"'{cut.name}': no dub plays under it; select the sound strips with the new "
                                "dialogue over it (or leave this cut out)")
            segments = cut_segments(snap, cut)
            lo, hi = cut.timing.visible
            s, e = tl.source_range(cut.timing, lo, hi)
            if s < 0:
                raise PlanError(f"'{cut.name}': it shows frames before its file starts; trim its start")
            cplan = CutPlan(cut.name, cut.path, s, e, (lo, hi), tuple(parts), tuple(ranges), segments, "", "")
            key = content_key(cut.path, (s, e), segments, parts, cplan.source_dub_ranges, snap.checkpoint,
                              {**options, "face_choice": cut.face_choice})
            ext = RESULT_EXTENSIONS[options.get("codec", "h264")]
            out = str(Path(snap.out_dir) / f"{_safe(Path(cut.path).stem)}_{s}-{e}_{key[:12]}{ext}")
            plans.append(CutPlan(cut.name, cut.path, s, e, (lo, hi), tuple(parts), tuple(ranges), segments,
                                 key, out, cut.face_choice))
        except PlanError as exc:
            problems.append(str(exc))
        except OSError as exc:
            problems.append(f"'{cut.name}': cannot read {exc.filename}: {exc.strerror}")
    if problems:
        raise PlanError(problem_report(problems))
    return plans


def problem_report(problems: list[str]) -> str:
    head = f"Lip Sync found {len(problems)} problem(s); nothing was run:"
    return "\n".join([head] + [f"- {p}" for p in problems])


def to_do(plans: list[CutPlan]) -> list[CutPlan]:
    """The cuts whose result must be made: no file for their key yet. Two cuts with the same inputs share one."""
    out, seen = [], set()
    for p in plans:
        if p.output not in seen and not os.path.isfile(p.output):
            seen.add(p.output)
            out.append(p)
    return out


def stored_result(plan: CutPlan) -> dict:
    """The engine's clip result kept beside a result file (its segments place markers again); {} if none."""
    try:
        with open(plan.output + ".json", encoding="utf-8") as fh:
            rec = json.load(fh)
        return rec["clip"] if rec.get("key") == plan.key else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def edit_job(snap: EditSnapshot, plans: list[CutPlan], outputs: list[str]) -> dict:
    return {"command": "sync", "checkpoint": snap.checkpoint, "options": engine_options(snap),
            "clips": [p.job_clip(o) for p, o in zip(plans, outputs)]}


def result_segments(plan: CutPlan, result: dict) -> list[tl.TimelineSegment]:
    """A clip's result segments (source frames) -> timeline segments over the cut's visible range."""
    shift = plan.timeline[0] - plan.start_frame
    rows = [(int(r["start_frame"]) + shift, int(r["end_frame"]) + shift, bool(r["face"]))
            for r in result.get("segments") or []]
    return tl.cover(rows, *plan.timeline)


def detect_job(snap: EditSnapshot) -> dict:
    """Face / no-face segments of every cut's visible source range, in one worker."""
    clips = [{"video": c.path, "start_frame": tl.source_frame(c.timing, c.timing.visible[0]),
              "end_frame": tl.source_frame(c.timing, c.timing.visible[1]), "face_choice": c.face_choice}
             for c in snap.cuts]
    opts = snap.options or {}
    return {"command": "segments", "clips": clips,
            "options": {"detector": opts.get("detector", "auto"), "device": snap.device,
                        "min_segment_seconds": opts.get("min_segment_seconds", 0.5)}}


def detected_segments(cut: CutRef, answer: dict) -> list[tl.TimelineSegment]:
    """One cut's segments answer -> segments in timeline frames covering its visible range exactly."""
    labels = [face_label(r) for r in answer["segments"]]  # which face each lip-syncs, where several show
    rows = [(tl.timeline_frame(cut.timing, s), tl.timeline_frame(cut.timing, e), f, label)
            for (s, e, f), label in zip(detected_ranges(answer), labels)]
    return tl.cover(rows, *cut.timing.visible)


def no_face_message(cuts: list[CutRef]) -> str:
    where = ", ".join(f"'{c.name}' (frames {c.timing.visible[0]}-{c.timing.visible[1]})" for c in cuts)
    return (f"No face anywhere in {where}: nothing to lip-sync. Check that the strips show a face, or place "
            "markers around the face and set Segments to Markers.")
