"""Read the timeline on the main thread into plain data (edit_plan.EditSnapshot), checking the editor's choices.

Every refusal is a PlanError whose message says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import bpy

from . import compat, face_choice, prefs, worker_client
from . import timeline as tl
from .edit_plan import CutRef, DubRef, EditSnapshot, problem_report
from .plan import PlanError

# On a movie strip that shows a Lip Sync result (its media swapped, see apply.show_result):
ORIGINAL = "lipsync_original"  # the source file's path as the strip held it
SRC_START = "lipsync_src_start"  # the source frame of the result's first frame
ORIG_OFFSETS = "lipsync_orig_offsets"  # the strip's animation offsets (start, end) on the source
KEY = "lipsync_key"  # the content key of the result it shows


def abspath(path: str, library=None) -> str:
    return os.path.normpath(bpy.path.abspath(path, library=library)) if path else ""


def strip_path(strip) -> str:
    if strip.type == "SOUND":
        snd = strip.sound
        return abspath(snd.filepath, snd.library) if snd is not None else ""
    return abspath(getattr(strip, "filepath", ""))


def shows_result(strip) -> bool:
    return strip.type == "MOVIE" and bool(strip.get(ORIGINAL))


def source_path(strip) -> str:
    """The file a movie strip cuts from: its original even while it shows a Lip Sync result."""
    return abspath(strip[ORIGINAL]) if shows_result(strip) else strip_path(strip)


def source_timing(strip) -> tl.Timing:
    """The strip's timing on its source file. For a strip showing a result, the timing it would have with the
    original back (the result's frame 0 is source frame SRC_START; the original's animation offset comes back),
    so moves and trims made since are followed."""
    t = timing(strip)
    if not shows_result(strip):
        return t
    aos = float(strip.get(ORIG_OFFSETS, (0, 0))[0])
    start = t.frame_start - t.animation_offset_start - int(strip[SRC_START]) + aos
    return tl.Timing(frame_start=start, final_start=t.final_start, final_end=t.final_end,
                     animation_offset_start=aos)


def timing(strip) -> tl.Timing:
    return tl.Timing(
        frame_start=float(strip.frame_start), final_start=int(strip.frame_final_start),
        final_end=int(strip.frame_final_end),
        animation_offset_start=float(getattr(strip, "animation_offset_start", 0.0)),
        sound_offset=float(getattr(strip, "sound_offset", 0.0)),
    )


def top_strips(scene) -> list:
    se = scene.sequence_editor
    return list(compat.strips(se)) if se is not None else []


def find_strip(scene, name: str):
    se = scene.sequence_editor
    return compat.strips(se).get(name) if (se is not None and name) else None


def is_own_sound(sound_strip, movie) -> bool:
    """A movie's own sound strip: same file, placed together (the same content start)."""
    return (sound_strip.type == "SOUND" and movie is not None and movie.type == "MOVIE"
            and strip_path(sound_strip) == source_path(movie)
            and abs(float(sound_strip.frame_start) - source_timing(movie).frame_start) < 0.5)


def own_sound_strips(scene, movie) -> list:
    return [s for s in top_strips(scene) if is_own_sound(s, movie)]


def default_video(scene):
    se = scene.sequence_editor
    active = se.active_strip if se is not None else None
    if active is not None and active.type == "MOVIE":
        return active
    movies = [s for s in top_strips(scene) if s.type == "MOVIE" and not is_result(s)]
    return movies[0] if len(movies) == 1 else None


def default_audio(scene, video):
    """The sound strip that is not the movie's own; the one overlapping the movie most if several."""
    sounds = [s for s in top_strips(scene) if s.type == "SOUND" and not is_own_sound(s, video)]
    if video is None or not sounds:
        return sounds[0] if len(sounds) == 1 else None

    def overlap(s):
        rng = tl.intersect((s.frame_final_start, s.frame_final_end), (video.frame_final_start, video.frame_final_end))
        return (rng[1] - rng[0]) if rng else 0

    best = max(sounds, key=overlap)
    return best if overlap(best) > 0 or len(sounds) == 1 else None


def is_result(strip) -> bool:
    return strip.get("lipsync_role") == "result"


def resolve_video(scene, settings):
    if settings.video_strip:
        strip = find_strip(scene, settings.video_strip)
        if strip is None:
            raise PlanError(f"The video strip '{settings.video_strip}' is not in scene '{scene.name}'; "
                            "pick another in the Lip Sync panel.")
    else:
        strip = default_video(scene)
        if strip is None:
            raise PlanError("No video strip chosen: pick one in the Sequencer sidebar > Lip Sync > Video, "
                            "or make a movie strip active.")
    if strip.type != "MOVIE":
        raise PlanError(f"'{strip.name}' is a {strip.type.lower()} strip; Video needs a movie strip.")
    return strip


def resolve_audio(scene, settings, video):
    if settings.audio_strip:
        strip = find_strip(scene, settings.audio_strip)
        if strip is None:
            raise PlanError(f"The audio strip '{settings.audio_strip}' is not in scene '{scene.name}'; "
                            "pick another in the Lip Sync panel.")
    else:
        strip = default_audio(scene, video)
        if strip is None:
            raise PlanError("No audio strip chosen: add the new dialogue as a sound strip under the video and "
                            "pick it in the Sequencer sidebar > Lip Sync > Audio.")
    if strip.type != "SOUND":
        raise PlanError(f"'{strip.name}' is a {strip.type.lower()} strip; Audio needs a sound strip.")
    if is_own_sound(strip, video):
        raise PlanError(f"'{strip.name}' is the video's own sound; pick the strip with the new dialogue.")
    return strip


def output_dir() -> tuple[str, bool]:
    """(folder, relative): beside the saved .blend as //lipsync/, else the extension's cache folder."""
    if bpy.data.filepath:
        return abspath("//lipsync"), True
    return str(Path(prefs.user_dir()) / "results"), False


# -- the edit: every selected cut, the dub over each


def selected_cuts(scene, settings) -> list:
    """The cuts to sync: Video when it names a strip, else every selected movie strip (never an old-style
    result strip), else the active movie strip."""
    if settings.video_strip:
        return [resolve_video(scene, settings)]
    cuts = [s for s in top_strips(scene) if s.type == "MOVIE" and s.select and not is_result(s)]
    if cuts:
        return sorted(cuts, key=lambda s: (s.frame_final_start, s.channel))
    video = default_video(scene)
    if video is None:
        raise PlanError("No video strip chosen: select the movie strips to lip-sync (or make one active), or pick "
                        "one in the Sequencer sidebar > Lip Sync > Video.")
    return [video]


def is_any_own_sound(strip, movies) -> bool:
    return any(is_own_sound(strip, m) for m in movies)


def selected_dubs(scene, settings, cuts) -> dict:
    """cut name -> the dub strips that may play under it. Audio when it names a strip; else the selected sound
    strips that are no movie's own sound; else, per cut, the sound strip under it that today's rule picks."""
    if settings.audio_strip:
        strip = resolve_audio(scene, settings, cuts[0])
        return {c.name: [strip] for c in cuts}
    movies = [s for s in top_strips(scene) if s.type == "MOVIE"]
    chosen = [s for s in top_strips(scene) if s.type == "SOUND" and s.select and not is_any_own_sound(s, movies)]
    if chosen:
        return {c.name: chosen for c in cuts}
    out = {}
    for c in cuts:
        strip = default_audio(scene, c)
        out[c.name] = [strip] if strip is not None and not is_any_own_sound(strip, movies) else []
    return out


def fcurve(scene, strip, prop: str):
    """The F-curve animating `prop` of `strip`, or None (5.0 layered actions: layers -> strips -> channelbags;
    4.x: action.fcurves)."""
    ad = scene.animation_data
    action = ad.action if ad is not None else None
    if action is None:
        return None
    path = f'sequence_editor.strips_all["{strip.name}"].{prop}'
    fcurves = list(getattr(action, "fcurves", None) or [])
    for layer in getattr(action, "layers", ()):
        for st in layer.strips:
            for bag in getattr(st, "channelbags", ()):
                fcurves += list(bag.fcurves)
    return next((f for f in fcurves if f.data_path == path), None)


def volume_per_frame(scene, strip) -> tuple[float, ...]:
    """A sound strip's keyframed volume at each frame of its visible range; () when it is not keyframed."""
    curve = fcurve(scene, strip, "volume")
    if curve is None:
        return ()
    return tuple(max(0.0, float(curve.evaluate(f))) for f in range(strip.frame_final_start, strip.frame_final_end))


def retimed(strip) -> bool:
    return len(getattr(strip, "retiming_keys", ())) > 0


def _movie_size(strip) -> tuple[int, int] | None:
    elements = getattr(strip, "elements", None)
    if not elements:
        return None
    w, h = int(elements[0].orig_width), int(elements[0].orig_height)
    return (w, h) if w > 0 and h > 0 else None


def strip_problems(scene, strip, fps: float, command: str = "sync", codec: str = "h264") -> list[str]:
    """What keeps a cut or a dub strip from being synced exactly, one line each naming the strip."""
    out = []
    path = source_path(strip) if strip.type == "MOVIE" else strip_path(strip)
    if not path or not os.path.isfile(path):
        out.append(f"'{strip.name}': its file is missing: {path or '(no path)'}; relink it (Sidebar > Strip > "
                   "Source)")
    if strip.type == "MOVIE":
        movie_fps = float(getattr(strip, "fps", 0.0) or 0.0)
        if movie_fps > 0 and not tl.fps_matches(movie_fps, fps) and not shows_result(strip):
            out.append(f"'{strip.name}': runs at {movie_fps:.3f} fps but the scene at {fps:.3f} fps; set the scene "
                       "frame rate to the movie's (Properties > Output > Frame Rate) or conform the clip")
    size = _movie_size(strip) if strip.type == "MOVIE" and not shows_result(strip) and command == "sync" else None
    # H.264 and FFV1 results of an odd size are written 4:4:4 (exact_size); ProRes 422 holds only even widths
    if size is not None and size[0] % 2 and codec == "prores":
        out.append(f"'{strip.name}': its picture is {size[0]}x{size[1]}; a ProRes 422 result needs an even width "
                   "and would not line up exactly; choose Result encoding H.264 or FFV1 (Preferences > Add-ons > "
                   "Lip Sync), or conform the clip to an even width")
    if retimed(strip):
        out.append(f"'{strip.name}': its speed is changed (retiming keys); Lip Sync needs it at normal speed: "
                   "Strip > Retiming > Reset, or leave it out")
    return out


def take_edit(context, command: str = "sync") -> EditSnapshot:
    """The edit to sync (or detect): every selected cut with the dub over it; every problem in one PlanError."""
    scene = compat.edit_scene(context)
    if scene.sequence_editor is None:
        raise PlanError("This scene has no strips: add the video and the new audio in the Video Sequencer.")
    cuts = selected_cuts(scene, scene.lipsync)
    dubs = selected_dubs(scene, scene.lipsync, cuts) if command == "sync" else {c.name: [] for c in cuts}
    return _edit(context, scene, cuts, dubs, command)


def take_named(context, scene, cut: str, dubs: list[str]) -> EditSnapshot:
    """One cut with the named dub strips over it, as a press would see them now (Import Batch Results checks
    that a cut still has the inputs it was exported with); PlanError when one is gone or has a problem."""
    strip = find_strip(scene, cut)
    if strip is None or strip.type != "MOVIE":
        raise PlanError(f"'{cut}': the movie strip is gone or renamed")
    gone = [d for d in dubs if find_strip(scene, d) is None]
    if gone:
        raise PlanError(f"'{cut}': its dub strip(s) {', '.join(repr(g) for g in gone)} are gone or renamed")
    return _edit(context, scene, [strip], {cut: [find_strip(scene, d) for d in dubs]}, "sync")


def _edit(context, scene, cuts: list, dubs: dict, command: str) -> EditSnapshot:
    settings = scene.lipsync
    p = prefs.get(context)
    fps = tl.scene_fps(scene.render.fps, scene.render.fps_base)
    if command == "sync" and not any(dubs.values()):
        raise PlanError("No audio strip chosen: add the new dialogue as sound strips under the video and select "
                        "them (or pick one in the Sequencer sidebar > Lip Sync > Audio).")
    codec = p.result_encoding.lower() if p is not None else "h264"
    problems = []
    checked = set()
    for c in cuts:
        for strip in [c, *dubs[c.name]]:
            if strip.name not in checked:
                checked.add(strip.name)
                problems += strip_problems(scene, strip, fps, command, codec)
    if problems:
        raise PlanError(problem_report(problems))
    checkpoint = abspath(p.checkpoint_path) if p is not None else ""
    if command == "sync" and not checkpoint:
        raise PlanError("No checkpoint: set Preferences > Add-ons > Lip Sync > Checkpoint to a Wav2Lip "
                        ".pth file (see checkpoints/README.md).")
    if command == "sync" and not os.path.isfile(checkpoint):
        raise PlanError(f"The checkpoint file is missing: {checkpoint}. Fix Preferences > Add-ons > "
                        "Lip Sync > Checkpoint.")
    python = prefs.engine_python(p)
    if not python:
        raise PlanError("No engine Python: set Preferences > Add-ons > Lip Sync > Python to a Python with torch "
                        "(python build.py setup makes .venv/bin/python in a checkout).")
    if not worker_client.core_dir():
        raise PlanError("lipsync_core is missing from the extension; reinstall the Lip Sync extension.")
    out_dir, relative = output_dir()
    markers = [(int(m.frame), m.name) for m in scene.timeline_markers]
    cut_refs = []
    for c in cuts:
        t = source_timing(c)
        lo, hi = t.visible
        cut_refs.append(CutRef(c.name, source_path(c), t, float(getattr(c, "fps", 0.0) or fps), strip_path(c),
                               tuple(tl.markers_in_range(markers, lo, hi)), face_choice.face_option_for(c)))
    dub_refs = {c.name: tuple(DubRef(d.name, strip_path(d), timing(d), float(d.volume), volume_per_frame(scene, d))
                              for d in dubs[c.name]) for c in cuts}
    return EditSnapshot(
        scene=scene.name, fps=fps, cuts=tuple(cut_refs), dubs=dub_refs, segment_source=settings.segment_source,
        blend=settings.blend_mode, pads=tuple(int(v) for v in settings.pads), python=python,
        checkpoint=checkpoint, device=p.device.lower() if p is not None else "auto", out_dir=out_dir,
        relative_paths=relative, cache_dir=str(Path(prefs.user_dir()) / "cache"),
        options={"codec": codec},
    )
