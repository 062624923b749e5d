"""Read the timeline on the main thread into plain data (plan.Snapshot), checking the editor's choices.

Every refusal is a PlanError whose message says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import bpy

from . import compat, face_choice, prefs, worker_client
from . import timeline as tl
from .plan import PlanError, Snapshot, StripRef


def abspath(path: str, library=None) -> str:
    return os.path.normpath(bpy.path.abspath(path, library=library)) if path else ""


def strip_path(strip) -> str:
    if strip.type == "SOUND":
        snd = strip.sound
        return abspath(snd.filepath, snd.library) if snd is not None else ""
    return abspath(getattr(strip, "filepath", ""))


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
            and strip_path(sound_strip) == strip_path(movie)
            and abs(float(sound_strip.frame_start) - float(movie.frame_start)) < 0.5)


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


def check_file(strip, path: str) -> None:
    if not path or not os.path.isfile(path):
        raise PlanError(f"The file of strip '{strip.name}' is missing: {path or '(no path)'}. Relink it "
                        "(Sidebar > Strip > Source) or pick another strip.")


def check_fps(strip, fps: float) -> None:
    movie_fps = float(getattr(strip, "fps", 0.0) or 0.0)
    if movie_fps > 0 and not tl.fps_matches(movie_fps, fps):
        raise PlanError(f"'{strip.name}' runs at {movie_fps:.3f} fps but the scene at {fps:.3f} fps. Set the scene "
                        "frame rate to the movie's (Properties > Output > Frame Rate) or conform the clip.")


def ref(strip, fps: float | None = None) -> StripRef:
    return StripRef(strip.name, strip.type, strip_path(strip), int(strip.channel), timing(strip), fps)


def output_dir() -> tuple[str, bool]:
    """(folder, relative): beside the saved .blend as //lipsync/, else the extension's cache folder."""
    if bpy.data.filepath:
        return abspath("//lipsync"), True
    return str(Path(prefs.user_dir()) / "results"), False


def take(context, command: str) -> Snapshot:
    """Snapshot for 'detect' or 'sync'; raises PlanError for anything the editor must fix first."""
    scene = compat.edit_scene(context)
    settings = scene.lipsync
    p = prefs.get(context)
    if scene.sequence_editor is None:
        raise PlanError("This scene has no strips: add the video and the new audio in the Video Sequencer.")
    fps = tl.scene_fps(scene.render.fps, scene.render.fps_base)
    video = resolve_video(scene, settings)
    check_file(video, strip_path(video))
    check_fps(video, fps)
    audio = None
    checkpoint = ""
    if command == "sync":
        audio = resolve_audio(scene, settings, video)
        check_file(audio, strip_path(audio))
        checkpoint = abspath(p.checkpoint_path) if p is not None else ""
        if not checkpoint:
            raise PlanError("No checkpoint: set Preferences > Add-ons > Lip Sync > Checkpoint to a Wav2Lip "
                            ".pth file (see checkpoints/README.md).")
        if not os.path.isfile(checkpoint):
            raise PlanError(f"The checkpoint file is missing: {checkpoint}. Fix Preferences > Add-ons > "
                            "Lip Sync > Checkpoint.")
    python = prefs.engine_python(p)
    if not python:
        raise PlanError("No engine Python: set Preferences > Add-ons > Lip Sync > Python to a Python with torch "
                        "(python build.py setup makes .venv/bin/python in a checkout).")
    if not worker_client.core_dir():
        raise PlanError("lipsync_core is missing from the extension; reinstall the Lip Sync extension.")
    out_dir, relative = output_dir()  # decided now: saving the .blend during the job must not change it
    return Snapshot(
        scene=scene.name, fps=fps, video=ref(video, float(getattr(video, "fps", 0.0) or fps)),
        audio=ref(audio) if audio is not None else None,
        markers=tuple((int(m.frame), m.name) for m in scene.timeline_markers),
        segment_source=settings.segment_source, blend=settings.blend_mode,
        pads=tuple(int(v) for v in settings.pads), python=python, checkpoint=checkpoint,
        device=p.device.lower() if p is not None else "auto", out_dir=out_dir, relative_paths=relative,
        cache_dir=str(Path(prefs.user_dir()) / "cache"), face_choice=face_choice.face_option_for(video),
    )
