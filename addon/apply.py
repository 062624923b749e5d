"""Put a finished job on the timeline (main thread only): markers, result strips, the muted original sound.

Everything is checked before the first change, so a refusal leaves the timeline as it was. What the add-on
placed is tagged (custom properties, "LS " names) so a second run replaces it instead of stacking duplicates.
"""

from __future__ import annotations

import math
import os

import bpy

from . import compat, snapshot
from . import timeline as tl
from .job_steps import Outcome
from .plan import Clip, PlanError, Snapshot

ROLE = "lipsync_role"  # "result" on strips this add-on made
SOURCE = "lipsync_source"  # the video strip a result belongs to
MUTED_FOR = "lipsync_muted_for"  # on sound strips this add-on muted: the video strip's name
RESULT_PREFIX = "LS "


def results_for(scene, video_name: str) -> list:
    return [s for s in snapshot.top_strips(scene) if s.get(ROLE) == "result" and s.get(SOURCE) == video_name]


def muted_for(scene, video_name: str) -> list:
    return [s for s in snapshot.top_strips(scene) if s.get(MUTED_FOR) == video_name]


def current_strips(scene, snap: Snapshot):
    """The strips the job was planned for, refusing if they were removed, moved or trimmed meanwhile."""
    video = snapshot.find_strip(scene, snap.video.name)
    if video is None or video.type != "MOVIE" or snapshot.timing(video) != snap.video.timing:
        raise PlanError(f"The video strip '{snap.video.name}' was removed, moved or trimmed while lip sync ran; "
                        "the timeline was not changed. Run it again.")
    audio = None
    if snap.audio is not None:
        audio = snapshot.find_strip(scene, snap.audio.name)
        if audio is None or audio.type != "SOUND" or snapshot.timing(audio) != snap.audio.timing:
            raise PlanError(f"The audio strip '{snap.audio.name}' was removed, moved or trimmed while lip sync "
                            "ran; the timeline was not changed. Run it again.")
    return video, audio


def replace_markers(scene, lo: int, hi: int, markers: list[tuple[int, str]]) -> int:
    """Remove our markers at lo..hi (the editor's own stay), add `markers`."""
    tm = scene.timeline_markers
    for m in [m for m in tm if tl.is_own_marker(m.name) and lo <= m.frame <= hi]:
        tm.remove(m)
    for frame, name in markers:
        tm.new(name, frame=frame)
    return len(markers)


def _copy_look(src, dst) -> None:
    """Same placement and crop as the source strip: a result is the source's frames with a new mouth."""
    for attr in ("offset_x", "offset_y", "scale_x", "scale_y", "rotation", "origin", "filter"):
        if hasattr(src.transform, attr):
            setattr(dst.transform, attr, getattr(src.transform, attr))
    for attr in ("min_x", "max_x", "min_y", "max_y"):
        setattr(dst.crop, attr, getattr(src.crop, attr))
    for attr in ("use_flip_x", "use_flip_y", "color_saturation", "color_multiply", "use_float"):
        if hasattr(src, attr):
            setattr(dst, attr, getattr(src, attr))


def _size(strip) -> tuple[int, int] | None:
    """The movie's frame size as Blender read it from the file (None when it could not be read)."""
    elements = getattr(strip, "elements", None)
    if not elements:
        return None
    w, h = int(elements[0].orig_width), int(elements[0].orig_height)
    return (w, h) if w > 0 and h > 0 else None


def _center_offset(canvas: int, image: int) -> int:
    # Blender centres a strip's image at (canvas - image) / 2 in C integer division: truncated toward zero.
    return int((canvas - image) / 2)


def align_padded(scene, src, dst) -> tuple[int, int]:
    """Line up a result the engine padded to even size with its odd-sized source movie, to the pixel.

    H.264 (yuv420p) needs even sizes, so the engine adds one edge column on the right and/or one row at the
    bottom: the result is 1 px wider/taller, and Blender centring both would show its picture up to a pixel
    off the movie under it. The extra column/row is cropped, and the offset moves the result's picture onto the
    source's: Blender's integer centring, plus where the bigger image's pivot (transform origin) sits, scaled and
    rotated as the source is (checked by rendering, flips included). Call after the look is copied. Depends on
    the render size: another parity later needs a new Lip Sync run. Returns the padding (columns, rows).
    """
    src_size, dst_size = _size(src), _size(dst)
    if src_size is None or dst_size is None:
        return (0, 0)
    dw, dh = dst_size[0] - src_size[0], dst_size[1] - src_size[1]
    if dw not in (0, 1) or dh not in (0, 1) or dw > src_size[0] % 2 or dh > src_size[1] % 2 or not (dw or dh):
        return (0, 0)  # not the even-size padding: leave it as the source's look says
    t_src, t = src.transform, dst.transform
    ox, oy = (tuple(t_src.origin) if hasattr(t_src, "origin") else (0.5, 0.5))
    # Blender's y points up: the padding row is the image's bottom row, so the picture sits dh rows higher in
    # the result; the pivot moves by (dw * ox, dh * oy). Both differences go through scale and rotation.
    vx, vy = -dw * ox * t_src.scale_x, dh * (1 - oy) * t_src.scale_y
    rot = float(getattr(t_src, "rotation", 0.0))
    rx, ry = math.cos(rot) * vx - math.sin(rot) * vy, math.sin(rot) * vx + math.cos(rot) * vy
    cx, cy = scene.render.resolution_x, scene.render.resolution_y
    t.offset_x = (t_src.offset_x + _center_offset(cx, src_size[0]) - _center_offset(cx, dst_size[0])
                  - rx - dw * ox)
    t.offset_y = (t_src.offset_y + _center_offset(cy, src_size[1]) - _center_offset(cy, dst_size[1])
                  - ry - dh * oy)
    dst.crop.max_x = src.crop.max_x + dw  # right
    dst.crop.min_y = src.crop.min_y + dh  # bottom
    return (dw, dh)


def result_channel(scene, video, clips: list[Clip], ignore: set[str] = frozenset()) -> int:
    """First channel above the video free over every clip's range, not counting the strips in `ignore`."""
    rows = [(int(s.channel), int(s.frame_final_start), int(s.frame_final_end))
            for s in snapshot.top_strips(scene) if s.name not in ignore]
    ch = tl.first_free_channel(rows, int(video.channel), [(c.start, c.end) for c in clips])
    if ch is None:
        raise PlanError(f"No free channel above '{video.name}' for the results; free a channel above it.")
    return ch


def result_name(video, clip: Clip) -> str:
    return f"{RESULT_PREFIX}{video.name} {clip.start}-{clip.end}"


def place_results(scene, video, clips: list[Clip], relative: bool) -> list:
    """Result movie strips on the first free channel above the video, each covering its clip exactly.

    They are made on a channel that is free right now (Blender moves a strip that lands on another when its
    handles change), the previous results are removed, then they move down to their channel.
    """
    se = scene.sequence_editor
    old = results_for(scene, video.name)
    target = result_channel(scene, video, clips, ignore={s.name for s in old})
    staging = result_channel(scene, video, clips)
    made = []
    try:
        for c in clips:
            path = bpy.path.relpath(c.output) if relative else c.output
            strip = compat.new_movie(se, result_name(video, c) + " (new)", path, staging, c.start)
            strip[ROLE] = "result"
            strip[SOURCE] = video.name
            made.append(strip)
            if strip.frame_final_end > c.end:  # noqa: PLR1730  (only touch handles when needed: it may move the strip)
                strip.frame_final_end = c.end
            _copy_look(video, strip)
            align_padded(scene, video, strip)
    except Exception:
        for strip in made:  # all or nothing
            compat.remove_strip(se, strip)
        raise
    for s in old:
        compat.remove_strip(se, s)
    for strip, c in zip(made, clips):
        strip.channel = target
        strip.name = result_name(video, c)
    return made


def mute_own_sound(scene, video, rng: tuple[int, int]) -> int:
    """Mute the movie's own sound over rng (splitting pieces at rng's ends); never deletes a strip.

    What a previous run muted for this video is unmuted first, so a changed audio range is followed.
    """
    for s in muted_for(scene, video.name):
        s.mute = False
        del s[MUTED_FOR]
    for frame in rng:  # each cut on the piece that straddles it (pieces change with every split)
        for piece in snapshot.own_sound_strips(scene, video):
            if piece.frame_final_start < frame < piece.frame_final_end:
                compat.split_strip(scene, piece, frame)
    muted = 0
    for piece in snapshot.own_sound_strips(scene, video):
        if rng[0] <= piece.frame_final_start and piece.frame_final_end <= rng[1] and not piece.mute:
            piece.mute = True
            piece[MUTED_FOR] = video.name
            muted += 1
    return muted


def apply_outcome(scene, snap: Snapshot, out: Outcome, relative: bool) -> str:
    """Apply a finished job; returns a one-line summary for the report. Raises PlanError before any change."""
    video, audio = current_strips(scene, snap)
    lo, hi = video.frame_final_start, video.frame_final_end
    if not out.clips:  # detection only
        n = replace_markers(scene, lo, hi, out.markers or [])
        faces = sum(1 for s in out.segments if s.face)
        return f"{n} markers: {faces} of {len(out.segments)} segments have a face"
    missing = [c.output for c in out.clips if not os.path.isfile(c.output)]
    if missing:
        raise PlanError(f"A result file disappeared: {missing[0]}; the timeline was not changed.")
    removed = len(results_for(scene, video.name))
    made = place_results(scene, video, out.clips, relative)
    muted = mute_own_sound(scene, video, (audio.frame_final_start, audio.frame_final_end))
    if out.markers is not None:
        replace_markers(scene, lo, hi, out.markers)
    return (f"{len(made)} lip-synced clip(s) on channel {made[0].channel}"
            + (f", replaced {removed}" if removed else "") + (f", muted {muted} original sound piece(s)"
                                                                if muted else ""))



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
    retime(strip, path, 0, *cut.timeline)
    strip[snapshot.SRC_START] = int(cut.start_frame)
    strip[snapshot.KEY] = cut.key


def restore_original(strip) -> None:
    """Put the strip's original file back, showing the same source frames over its current range."""
    t = snapshot.source_timing(strip)
    lo, hi = t.visible
    offsets = tuple(strip.get(snapshot.ORIG_OFFSETS, (0.0, 0.0)))
    retime(strip, strip[snapshot.ORIGINAL], tl.source_frame(t, lo), lo, hi, offsets)
    for prop in (snapshot.ORIGINAL, snapshot.ORIG_OFFSETS, snapshot.SRC_START, snapshot.KEY):
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
        strip = snapshot.find_strip(scene, cut.cut)
        if strip is None or strip.type != "MOVIE" or snapshot.source_timing(strip) != cut_refs[cut.cut].timing:
            raise PlanError(f"The strip '{cut.cut}' was removed, moved or trimmed while lip sync ran; the timeline "
                            "was not changed. Run it again.")
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
