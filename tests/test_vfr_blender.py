"""Variable-frame-rate movies in bpy 5.0.1: the engine's frame n is the picture Blender renders at frame n, and a
lip-synced result strip lines up with its movie frame for frame.
"""

# ruff: noqa: F811  (pytest fixtures imported from blender_env come back as test arguments)
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import bpy
import numpy as np
import pytest
import vfr_media as vm

import blender_env as be
from blender_env import checkpoint, configured, lipsync_addon  # noqa: F401  (fixtures)
from lipsync_core.media import FrameReader, probe


@pytest.fixture(scope="module")
def clips(tmp_path_factory, shared_media):
    d = tmp_path_factory.mktemp("vfr_bl")
    c = vm.made_vfr_clips(d)
    c["real"] = vm.real_vfr_clip(shared_media, d / "real.mp4")
    return c


def movie_scene(name: str, path, info):
    """A scene at the movie's own frame rate as Blender reads it, the movie at frame 1."""
    scene = be.new_scene(name)
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = info.width, info.height, 100
    r.image_settings.file_format = "PNG"
    movie = scene.sequence_editor.strips.new_movie(name, str(path), 1, 1)
    rate = Fraction(movie.fps).limit_denominator(1001)
    r.fps, r.fps_base = rate.numerator, float(rate.denominator)
    return scene, movie


def render(scene, frame: int, path) -> np.ndarray:
    import cv2

    scene.frame_set(int(frame))
    scene.render.filepath = str(path)
    with bpy.context.temp_override(scene=scene):
        bpy.ops.render.render(write_still=True, scene=scene.name)
    return cv2.imread(str(path)).astype(np.int16)


@pytest.mark.parametrize("key", ["drop", "late", "jitter", "mkv", "bframes", "webm", "steps", "cut", "real"])
def test_engine_frame_n_is_blenders_frame_n(lipsync_addon, clips, key, tmp_path):
    """Every frame Blender shows, rendered, against every frame the engine decodes: render n's closest engine
    frame is the engine's frame n (or one with the same picture, where a frame repeats)."""
    path = clips[key]
    info = probe(path)
    scene, movie = movie_scene(f"vfr_{key}", path, info)
    assert movie.frame_duration == info.frames and movie.fps == pytest.approx(info.fps, abs=1e-4)
    with FrameReader(path, info=info) as r:
        engine = np.stack(list(r)).astype(np.int16)
    wrong = []
    for n in range(info.frames):
        shown = render(scene, movie.frame_start + n, tmp_path / "r.png")
        err = np.abs(engine - shown).mean(axis=(1, 2, 3))
        if err[n] > err.min() + 0.01 or err[n] > 3:
            wrong.append((n, int(err.argmin())))
    assert wrong == [], f"{key}: (Blender frame, engine frame that matches it)"


def test_result_strip_lines_up_with_its_variable_rate_movie(configured, checkpoint, clips, tmp_path):
    """Issue 14: Lip Sync refused such a movie ("frame range 0-183 is outside the video (135 frames)"). The job the
    add-on builds for the strip runs through the worker, and the result, placed by the add-on, shows its movie's
    picture at every frame (compared away from the mouth)."""
    from tools.sample_media import speech_wav

    apply, ops, job_steps = (be.submodule(m) for m in ("apply", "ops", "job_steps"))
    path = clips["late"]
    info = probe(path)
    scene, movie = movie_scene("vfr_result", path, info)
    speech = speech_wav(tmp_path / "speech.wav", seconds=2.5)
    scene.sequence_editor.strips.new_sound("speech", str(speech), 2, 6)  # the new line starts at frame 6
    scene.sequence_editor.active_strip = movie
    scene.lipsync.segment_source = "STRIP"
    name, lo, hi = movie.name, movie.frame_final_start, movie.frame_final_end
    box = (40, 40, 120, 116)  # the mouth region; the code bar and the face's upper half stay outside it
    keep = np.ones((info.height, info.width), bool)
    keep[box[1] : box[3], box[0] : box[2]] = False
    want = {f: render(scene, f, tmp_path / f"movie{f}.png") for f in range(lo, hi)}  # before the press
    snap = ops.prepare(bpy.context, "sync")
    snap.options.update(box=list(box), batch_size=16)
    outcome = job_steps.JobSteps(snap, "sync").run()  # the add-on's own job through the real worker
    assert outcome.status == "done", outcome.message
    apply.apply_edit(scene, snap, outcome)
    strip = scene.sequence_editor.strips[name]
    assert strip.get("lipsync_key") and Path(bpy.path.abspath(strip.filepath)) != Path(path)
    assert (strip.frame_final_start, strip.frame_final_end) == (lo, hi)
    for f in range(lo, hi):
        got = render(scene, f, tmp_path / "result.png")
        # the same source frame (its code), and the same picture up to the result's encoding loss
        assert vm.read_code(got.astype(np.uint8)) == vm.read_code(want[f].astype(np.uint8)), f
        assert np.abs(got - want[f])[keep].mean() < 4.0, f
