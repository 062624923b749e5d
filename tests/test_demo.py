"""tools/demo.py (`python build.py demo`) in parts, plus one small full pass in its own process.

The parts run here in bpy 5.0.1 with the test user folder (blender_env); the full pass runs `python -m
tools.demo --quick --untrained` exactly as build.py does, with its own user folder under its --out.
"""

# ruff: noqa: F811  (pytest fixtures imported from blender_env come back as test arguments)
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import bpy
import numpy as np
import pytest
from mirror import serve_wav2lip

import blender_env as be  # first: bpy with a temporary user folder
from blender_env import checkpoint, lipsync_addon  # noqa: F401  (fixtures)
from lipsync_core import media
from tools import demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    return demo.make_material(tmp_path_factory.mktemp("demo_material"), quick=True)


def _no_download(name, dest):
    return None, "no network in this test"


# ---------------------------------------------------------------------------- 1. material


def test_material_face_cutaway_face_with_own_sound_and_a_line(material):
    m = material
    info = media.probe(m.clip)
    assert (info.width, info.height, info.fps, info.frames) == (m.width, m.height, 25.0, m.frames)
    assert info.has_audio
    assert m.frames == m.face1 + m.noface + (m.frames - m.face1 - m.noface)
    assert m.frames >= (demo.LEAD_S + m.line_seconds) * 25  # the whole line fits under the clip
    assert media.probe_audio(m.line).duration == pytest.approx(m.line_seconds, abs=0.05) and m.line_seconds > 1.0
    assert m.line_source == ("espeak-ng" if demo.espeak() else "assets/demo_line.opus")
    # the parts are what they claim: a face in each face part, none in the cutaway (the detector the engine
    # falls back to without S3FD weights)
    from lipsync_core.faces.detectors import get_detector

    with media.FrameReader(m.clip) as reader:
        frames = list(reader)
    assert len(frames) == m.frames
    det = get_detector("opencv")
    picks = [m.face1 // 2, m.face1 + m.noface // 2, m.face1 + m.noface + 5]
    boxes = det.detect(np.stack([np.asarray(frames[i]) for i in picks]))
    assert [len(b) > 0 for b in boxes] == [True, False, True]


def test_line_without_espeak_is_the_projects_recording(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "espeak", lambda: None)
    path, source = demo.make_line(tmp_path / "line.wav", "ignored")
    assert source == "assets/demo_line.opus"
    assert media.probe_audio(path).duration == pytest.approx(7.1, abs=0.2)
    own = demo.make_own_sound(tmp_path / "own.wav", 2.0)  # a soft tone instead of a second voice
    assert media.probe_audio(own).duration == pytest.approx(2.0, abs=0.05)


# ---------------------------------------------------------------------------- 2. weights


def test_no_weights_anywhere_means_untrained_said_loudly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "checkpoint_dirs", lambda: [tmp_path / "checkpoints"])
    asked = []
    w = demo.find_checkpoint(tmp_path, download=lambda name, dest: (asked.append((name, dest)), _no_download(
        name, dest))[1])
    assert asked == [("wav2lip_gan", tmp_path / "checkpoints")]  # it tried once, quickly
    assert not w.trained and w.path == tmp_path / "untrained_wav2lip.pth"
    assert demo.structure_problems(w.path) == []  # a real generator layout, random numbers
    out = capsys.readouterr().out
    assert "UNTRAINED WEIGHTS: LIPS ARE NOT SYNCED" in out and "none could be downloaded" in out
    assert "does NOT follow the words" in out
    assert "UNTRAINED" in w.note


def test_a_real_checkpoint_is_used_and_a_broken_one_skipped(tmp_path, monkeypatch, capsys, checkpoint):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "wav2lip_gan.pth").write_bytes(b"an interrupted download, not a checkpoint")
    shutil.copy(checkpoint, folder / "wav2lip.pth")
    monkeypatch.setattr(demo, "checkpoint_dirs", lambda: [folder])
    w = demo.find_checkpoint(tmp_path, download=pytest.fail)
    assert w.trained and w.path == folder / "wav2lip.pth"
    out = capsys.readouterr().out
    assert f"skipping {folder / 'wav2lip_gan.pth'}" in out and "UNTRAINED" not in out
    assert not (tmp_path / "untrained_wav2lip.pth").exists()


def test_a_downloaded_checkpoint_is_used(tmp_path, monkeypatch, checkpoint):
    monkeypatch.setattr(demo, "checkpoint_dirs", lambda: [tmp_path / "checkpoints"])
    got = tmp_path / "got.pth"
    shutil.copy(checkpoint, got)
    w = demo.find_checkpoint(tmp_path, download=lambda name, dest: (got, "downloaded and verified"))
    assert w.trained and w.path == got


def test_untrained_flag_and_bad_explicit_checkpoint(tmp_path, monkeypatch, checkpoint, capsys):
    monkeypatch.setattr(demo, "checkpoint_dirs", lambda: pytest.fail("--untrained must not look for weights"))
    w = demo.find_checkpoint(tmp_path, untrained=True, download=pytest.fail)
    assert not w.trained and "--untrained" in capsys.readouterr().out
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"junk")
    with pytest.raises(SystemExit, match="not a Wav2Lip generator checkpoint"):
        demo.find_checkpoint(tmp_path, explicit=bad)
    assert demo.find_checkpoint(tmp_path, explicit=Path(checkpoint)).trained


@pytest.fixture
def mirror(tmp_path, checkpoint, monkeypatch):
    """A local weights mirror on 127.0.0.1 serving a random-weight wav2lip.pth (LIPSYNC_WEIGHTS_MIRRORS)."""
    yield from serve_wav2lip(tmp_path, checkpoint, monkeypatch)


def test_download_runs_the_weights_cli(mirror, tmp_path):
    path, what = demo.download_weights("wav2lip", tmp_path / "dest")
    assert path == tmp_path / "dest" / "wav2lip.pth" and what == "downloaded and verified"
    assert path.read_bytes() == (mirror / "wav2lip.pth").read_bytes()


# ---------------------------------------------------------------------------- 3-4. extension and timeline


def _coll(scene):
    se = scene.sequence_editor
    return se.strips if hasattr(se, "strips") else se.sequences


def test_timeline_with_the_untrained_notice(lipsync_addon, material, tmp_path):
    weights = demo.Weights(tmp_path / "untrained_wav2lip.pth", False, "test")
    tl = demo.build_timeline(material, weights, tmp_path / "demo.blend", name="DemoUntrained")
    scene = bpy.data.scenes[tl.scene]
    assert tl.blend.is_file() and bpy.data.filepath == str(tl.blend)
    copy = shutil.copy(tl.blend, tmp_path / "copy.blend")  # Blender will not read the open file as a library
    with bpy.data.libraries.load(str(copy)) as (src, _dst):
        assert "DemoUntrained" in src.scenes  # saved with the strips
    assert scene.view_settings.view_transform == "Standard"
    assert (scene.render.fps, scene.render.fps_base) == (25, 1.0)
    assert (scene.render.resolution_x, scene.render.resolution_y) == (material.width, material.height)
    strips = {s.name: s for s in _coll(scene)}
    movie, own, line = strips[tl.movie], strips[tl.own_sound], strips[tl.line]
    assert (movie.type, movie.channel, movie.frame_final_start, movie.frame_final_end) == \
        ("MOVIE", 1, 1, 1 + material.frames)
    assert own.type == "SOUND" and own.channel == 2 and own.frame_final_start == 1
    assert bpy.path.abspath(own.sound.filepath) == bpy.path.abspath(movie.filepath)  # the movie's own sound
    assert line.type == "SOUND" and line.channel == 3 and line.frame_final_start == 1 + round(demo.LEAD_S * 25)
    assert line.frame_final_end <= movie.frame_final_end
    assert movie.filepath.startswith("//") and line.sound.filepath.startswith("//")  # relative: out/ can move
    notice = strips[tl.notice]
    assert notice.type == "TEXT" and notice.text == demo.NOTICE == "untrained weights: lips are not synced"
    assert (notice.frame_final_start, notice.frame_final_end) == (1, movie.frame_final_end)
    assert notice.channel > max(s.channel for s in _coll(scene) if s != notice)
    assert (scene.frame_start, scene.frame_end) == (1, material.frames)
    # what the extension will pick by itself, as an editor who clicks without choosing anything
    snapshot = be.submodule("snapshot")
    assert snapshot.default_video(scene) == movie
    assert snapshot.default_audio(scene, movie) == line


def test_timeline_with_real_weights_has_no_notice(lipsync_addon, material, tmp_path):
    weights = demo.Weights(tmp_path / "wav2lip_gan.pth", True, "test")
    tl = demo.build_timeline(material, weights, tmp_path / "demo.blend", name="DemoTrained")
    assert tl.notice is None
    assert not [s for s in _coll(bpy.data.scenes[tl.scene]) if s.type == "TEXT"]


def test_demo_refuses_to_run_after_bpy_was_imported_elsewhere(tmp_path):
    with pytest.raises(RuntimeError, match="fresh process"):
        demo.prepare_user_resources(tmp_path)


# ---------------------------------------------------------------------------- the whole demo, small


@pytest.mark.parametrize("ffprobe", ["ffprobe", "no-ffprobe"])
def test_media_summary_names_the_codecs_with_or_without_ffprobe(material, monkeypatch, ffprobe):
    """The summary line reads the engine's own probe: no `? + aac?` where ffprobe is missing."""
    from lipsync_core.media import ffmpeg as ffbin

    if ffprobe == "no-ffprobe":
        monkeypatch.setattr(ffbin, "ffprobe_exe", lambda: None)  # as with imageio-ffmpeg's binary alone
    elif ffbin.ffprobe_exe() is None:
        pytest.skip("no ffprobe on this machine")
    info = demo.media_info(material.clip)
    assert (info["video"], info["audio"]) == ("h264", "aac")
    assert "h264 + aac" in demo.Rendered(material.clip, info).note


def test_small_full_demo_in_its_own_process(tmp_path):
    """`python build.py demo` minus set-up: material, untrained weights, install, timeline, detect, sync, render."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("BLENDER_USER_RESOURCES", "LIPSYNC_TEST_USER_RESOURCES")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "tools.demo", "--quick", "--untrained", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    for step in ("material", "weights", "extension", "timeline", "detect", "sync", "render", "total"):
        assert f"    {step:<10} " in proc.stdout, step  # the step-time table
    assert proc.stdout.count("UNTRAINED WEIGHTS: LIPS ARE NOT SYNCED") == 2  # when chosen and at the end
    assert "Video append frame" not in proc.stdout  # Blender's per-frame log went to demo.render.log
    assert (out / "blender_user" / "extensions" / "user_default" / "lipsync" / "__init__.py").is_file()
    assert (out / "demo.blend").is_file() and not (out / "demo.blend1").exists()
    results = list((out / "lipsync").rglob("*.mp4"))
    assert len(results) == 1, results  # the strip's result: face parts lip-synced, the cutaway as it was

    movie = out / "demo.mp4"
    info = demo.media_info(movie)
    clip = media.probe(out / "demo_clip.mp4")
    assert info["video"] == "h264" and info["audio"] == "aac"
    assert info["audio"] is not None and info["seconds"] == pytest.approx(clip.frames / 25, abs=0.05)
    assert (info["width"], info["height"], info["frames"]) == (clip.width, clip.height, clip.frames)

    # the notice is on the picture: yellow text on a dark box along the bottom, over every part
    from lipsync_core.media import ffmpeg_exe

    w, h = clip.width, clip.height
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(movie), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)
    for i in (2, clip.frames // 2, clip.frames - 3):
        bottom = frames[i, int(h * 0.8):].astype(int)
        yellow = (bottom[..., 0] > 180) & (bottom[..., 1] > 140) & (bottom[..., 2] < 100)
        assert yellow.sum() > 40, (i, int(yellow.sum()))
    top = frames[2, : int(h * 0.5)].astype(int)
    assert ((top[..., 0] > 180) & (top[..., 1] > 140) & (top[..., 2] < 100)).sum() < yellow.sum()
