"""Put a finished job on the timeline (main thread only): markers; each cut's strip showing its result; the
muted own sound.

Everything is checked before the first change, so a refusal leaves the timeline as it was. What the add-on
changed is tagged (custom properties, "LS " marker names) so a second run follows it instead of stacking.
"""

from __future__ import annotations

import os

import bpy

from . import compat, snapshot
from . import timeline as tl
from .job_steps import Outcome
from .plan import PlanError

MUTED_FOR = "lipsync_muted_for"  # on sound strips this add-on muted: the video strip's name
ORIG_STREAM = "lipsync_orig_stream"  # the video stream a strip showed before it showed a result
RESULT_PREFIX = "LS "


def muted_for(scene, video_name: str) -> list:
    return [s for s in snapshot.top_strips(scene) if s.get(MUTED_FOR) == video_name]


def replace_markers(scene, lo: int, hi: int, markers: list[tuple[int, str]]) -> int:
    """Remove our markers at lo..hi (the editor's own stay), add `markers`."""
    tm = scene.timeline_markers
    for m in [m for m in tm if tl.is_own_marker(m.name) and lo <= m.frame <= hi]:
        tm.remove(m)
    for frame, name in markers:
        tm.new(name, frame=frame)
    return len(markers)


def _current_cut(scene, name: str, timing):
    strip = snapshot.find_strip(scene, name)
    if strip is None or strip.type != "MOVIE" or snapshot.source_timing(strip) != timing:
        raise PlanError(f"The strip '{name}' was removed, moved or trimmed while lip sync ran; the timeline was not "
                        "changed. Run it again.")
    return strip


def apply_detect(scene, snap, out: Outcome) -> str:
    """Markers for every cut's segments (ours inside each cut replaced; the editor's stay)."""
    for cut in snap.cuts:
        _current_cut(scene, cut.name, cut.timing)
    n = faces = total = 0
    for cut in snap.cuts:
        segs = out.detected.get(cut.name, [])
        n += replace_markers(scene, *cut.timing.visible, tl.markers_for_segments(segs))
        faces += sum(1 for s in segs if s.face)
        total += len(segs)
    return f"{n} markers: {faces} of {total} segments have a face" + (
        f" in {len(snap.cuts)} strips" if len(snap.cuts) > 1 else "")


# -- the edit: each cut's own strip shows its result (its media swapped), so it keeps its whole look


def retime(strip, path: str, first: int, lo: int, hi: int, offsets: tuple[float, float] = (0.0, 0.0)) -> None:
    """Point `strip` at `path` so that its visible range stays [lo, hi) and shows the file's frames from `first`.

    Everything else on the strip (transform, crop, modifiers, blend, colour space, keyframes, name) is kept.
    `offsets`: animation offsets to restore where they fit. Done on a free channel: Blender moves a strip that
    overlaps another while its handles change, and its visible range is the same again at the end.
    """
    se = strip.id_data.sequence_editor
    channel = int(strip.channel)
    strip.channel = max(int(s.channel) for s in compat.strips_all(se)) + 1 if channel < tl.MAX_CHANNEL else channel
    strip.filepath = path
    strip.animation_offset_start = strip.animation_offset_end = 0
    strip.frame_offset_start = strip.frame_offset_end = 0
    length = int(strip.frame_duration)
    aos = min(int(offsets[0]), first)
    aoe = max(0, min(int(offsets[1]), length - first - (hi - lo)))
    strip.animation_offset_start, strip.animation_offset_end = aos, aoe
    strip.frame_start = lo - first + aos
    strip.frame_offset_start = first - aos
    strip.frame_offset_end = strip.frame_start + strip.frame_duration - hi
    strip.channel = channel


def show_result(strip, path: str, cut) -> None:
    """The strip shows the result file of `cut` (covering exactly its visible range); its original is kept."""
    if not snapshot.shows_result(strip):
        strip[snapshot.ORIGINAL] = strip.filepath
        strip[snapshot.ORIG_OFFSETS] = (float(strip.animation_offset_start), float(strip.animation_offset_end))
        strip[ORIG_STREAM] = int(getattr(strip, "stream_index", 0))
    if getattr(strip, "stream_index", 0):
        strip.stream_index = 0  # a result holds one video stream
    retime(strip, path, 0, *cut.timeline)
    strip[snapshot.SRC_START] = int(cut.start_frame)
    strip[snapshot.KEY] = cut.key


def restore_original(strip) -> None:
    """Put the strip's original file back, showing the same source frames over its current range."""
    t = snapshot.source_timing(strip)
    lo, hi = t.visible
    offsets = tuple(strip.get(snapshot.ORIG_OFFSETS, (0.0, 0.0)))
    if strip.get(ORIG_STREAM):
        strip.stream_index = int(strip[ORIG_STREAM])
    retime(strip, strip[snapshot.ORIGINAL], tl.source_frame(t, lo), lo, hi, offsets)
    for prop in (snapshot.ORIGINAL, snapshot.ORIG_OFFSETS, snapshot.SRC_START, snapshot.KEY, ORIG_STREAM):
        if prop in strip:
            del strip[prop]


def mute_own_sound_over(scene, video, ranges: list[tuple[int, int]]) -> int:
    """Mute the movie's own sound over `ranges` (splitting pieces at their ends); never deletes a strip.
    What was muted for this movie before is unmuted first, so a changed dub is followed."""
    for s in muted_for(scene, video.name):
        s.mute = False
        del s[MUTED_FOR]
    for rng in ranges:
        for frame in rng:
            for piece in snapshot.own_sound_strips(scene, video):
                if piece.frame_final_start < frame < piece.frame_final_end:
                    compat.split_strip(scene, piece, frame)
    muted = 0
    for piece in snapshot.own_sound_strips(scene, video):
        inside = any(lo <= piece.frame_final_start and piece.frame_final_end <= hi for lo, hi in ranges)
        if inside and not piece.mute:
            piece.mute = True
            piece[MUTED_FOR] = video.name
            muted += 1
    return muted


def apply_edit(scene, snap, out: Outcome) -> str:
    """Every cut whose result changed shows its new result; the others are left alone. Refuses (PlanError)
    before any change when a cut was moved, trimmed or removed while the job ran, or a result is missing."""
    from .edit_plan import result_segments, stored_result

    cut_refs = {c.name: c for c in snap.cuts}
    changed, faceless = [], []
    for cut in out.cuts:
        strip = _current_cut(scene, cut.cut, cut_refs[cut.cut].timing)
        if not os.path.isfile(cut.output):
            raise PlanError(f"A result file disappeared: {cut.output}; the timeline was not changed.")
        if snapshot.shows_result(strip) and strip.get(snapshot.KEY) == cut.key:
            continue  # already shows this very result
        row = out.made.get(cut.cut) or stored_result(cut)
        if row and not row.get("face_frames"):
            faceless.append(cut.cut)  # no face where the dub plays: the strip keeps its own file
            continue
        changed.append((strip, cut))
    if faceless and len(faceless) == len(out.cuts):
        raise PlanError(f"No face anywhere under the dub in {', '.join(repr(n) for n in faceless)}: nothing to "
                        "lip-sync. Check that the strips show a face, or place markers around the face and set "
                        "Segments to Markers.")
    muted = 0
    for strip, cut in changed:
        muted += mute_own_sound_over(scene, strip, list(cut.dub_ranges))
        path = bpy.path.relpath(cut.output) if snap.relative_paths else cut.output
        show_result(strip, path, cut)
        if snap.segment_source == "AUTO":
            segs = result_segments(cut, out.made.get(cut.cut) or stored_result(cut))
            if segs:
                replace_markers(scene, *cut.timeline, tl.markers_for_segments(segs))
    made = sum(1 for _, c in changed if c.cut in out.made)
    same = len(out.cuts) - len(changed) - len(faceless)
    text = f"{len(changed)} of {len(out.cuts)} cut(s) now show their lip-synced result"
    if made < len(changed):
        text += f" ({made} made now, {len(changed) - made} from earlier results)"
    if same:
        text += f", {same} unchanged"
    if faceless:
        text += f", {len(faceless)} without a face under the dub left as they were"
    return text + (f", muted {muted} original sound piece(s)" if muted else "")
