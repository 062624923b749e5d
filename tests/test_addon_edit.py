"""The whole edit in one press (bpy 5.0.1, the real worker, random weights): three cuts from two files, the dub
as two selected sound strips, music that is not dub; one engine process; only what changed is made again."""

# ruff: noqa: F811  (pytest fixtures imported from blender_env come back as test arguments)
from __future__ import annotations

import time
from pathlib import Path

import bpy
import numpy as np
import pytest

import blender_env as be
from blender_env import checkpoint, configured, lipsync_addon  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
AS_UI = ("EXEC_DEFAULT", True)  # pushes the operator's undo step, as a click does
OWN_HZ, MUSIC_HZ = 440.0, 1000.0
# the layout (timeline frames, end exclusive): cut1 = a.mp4 0-40 (face to 25) at 1-41, cut2 = b.mp4 5-35 at
# 41-71 (scaled, offset, cropped, colour-balanced, keyframed opacity), cut3 = a.mp4 40-65 (face) at 71-96;
# dub1 (speech from 0 s, volume 0.8) at 11-55, dub2 (speech from 2 s) at 60-96, music under everything.
DUB1, DUB2 = (11, 55), (60, 96)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from tools import sample_media as sm

    d = tmp_path_factory.mktemp("edit_media")
    tone = sm.tone_wav(d / "own.wav", 3.0, OWN_HZ)
    sm.face_noface_face_clip(d / "a.mp4", 25, 15, 25, audio=tone)
    sm.write_video(d / "b.mp4", sm.astronaut_frames(40, motion=2.0), audio=tone)
    sm.speech_wav(d / "speech.wav", seconds=4.0)
    sm.tone_wav(d / "music.wav", 4.0, MUSIC_HZ)
    return d


def _build(name: str, media: Path):
    scene = be.new_scene(name)
    scene.render.resolution_x, scene.render.resolution_y = 320, 240
    coll = scene.sequence_editor.strips
    a, b = media / "a.mp4", media / "b.mp4"
    for cut, path, at, lo, hi in (("cut1", a, 1, 1, 41), ("cut2", b, 36, 41, 71), ("cut3", a, 31, 71, 96)):
        be.place_strip(coll, "MOVIE", cut, path, 1, at, lo, hi)
        be.place_strip(coll, "SOUND", f"{cut}.sound", path, 2, at, lo, hi)
    dub1 = be.place_strip(coll, "SOUND", "dub1", media / "speech.wav", 5, 11, *DUB1)
    dub1.volume = 0.8
    be.place_strip(coll, "SOUND", "dub2", media / "speech.wav", 6, 10, *DUB2)
    music = be.place_strip(coll, "SOUND", "music", media / "music.wav", 7, 1, 1, 96)
    music.volume = 0.3
    music.select = False  # everything else stays selected (new strips are): own sounds must not count as dub
    cut2 = coll["cut2"]
    cut2.transform.scale_x = cut2.transform.scale_y = 0.8
    cut2.transform.offset_x, cut2.transform.offset_y = 10, -5
    cut2.crop.min_x = 8
    with bpy.context.temp_override(scene=scene, sequencer_scene=scene):
        cut2.modifiers.new("grade", "COLOR_BALANCE").color_balance.gain = (1.2, 1.0, 0.8)
    cut2.blend_alpha = 1.0
    cut2.keyframe_insert("blend_alpha", frame=41)
    cut2.blend_alpha = 0.6
    cut2.keyframe_insert("blend_alpha", frame=70)
    scene.frame_start, scene.frame_end = 1, 95
    scene.lipsync.segment_source = "AUTO"
    return scene


def _look(strip) -> tuple:
    t, c = strip.transform, strip.crop
    return ((strip.frame_final_start, strip.frame_final_end, strip.channel), (t.offset_x, t.offset_y, t.scale_x,
            t.scale_y, t.rotation), (c.min_x, c.max_x, c.min_y, c.max_y), strip.blend_type, strip.blend_alpha,
            strip.colorspace_settings.name, tuple((m.type, m.name) for m in strip.modifiers))


def _render_frames(scene, frames, out_dir: Path) -> dict:
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    r = scene.render
    r.resolution_percentage = 100
    if hasattr(r.image_settings, "media_type"):
        r.image_settings.media_type = "IMAGE"
    r.image_settings.file_format = "PNG"
    got = {}
    for f in frames:
        scene.frame_set(f)
        r.filepath = str(out_dir / f"f{f}.png")
        with bpy.context.temp_override(scene=scene):
            bpy.ops.render.render(write_still=True, scene=scene.name)
        got[f] = cv2.imread(r.filepath).astype(np.float64)
    return got


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _mixdown(scene, path: Path, sr: int = 16000) -> np.ndarray:
    import subprocess

    from lipsync_core.media import ffmpeg_exe

    with bpy.context.temp_override(scene=scene):
        assert bpy.ops.sound.mixdown(filepath=str(path), container="WAV", codec="PCM", format="S16",
                                     mixrate=48000, channels="MONO") == {"FINISHED"}
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-ac", "1", "-ar", str(sr), "-f", "f32le",
                          "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.float32)


def _tone_share(x: np.ndarray, hz: float, sr: int = 16000) -> float:
    t = np.arange(len(x)) / sr
    return float(2 * abs(np.sum(x * np.exp(-2j * np.pi * hz * t))) ** 2 / (len(x) * np.sum(x ** 2) + 1e-12))


@pytest.fixture
def worker_jobs(lipsync_addon, monkeypatch):
    """Every engine job the add-on starts (not the cached Python check)."""
    wc = be.submodule("worker_client")
    seen: list[dict] = []
    run = wc.WorkerProcess.run

    def counted(self):
        if self.job.get("command") != "check":
            seen.append(self.job)
        return run(self)

    monkeypatch.setattr(wc.WorkerProcess, "run", counted)
    return seen


@pytest.fixture(scope="module")
def pressed(lipsync_addon, checkpoint, media, tmp_path_factory):
    be.configure(checkpoint)
    blend = tmp_path_factory.mktemp("edit_project") / "edit.blend"
    _build("Cuts", media)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    scene = bpy.data.scenes["Cuts"]
    frames = [5, 20, 30, 50, 57, 80]
    before = {"render": _render_frames(scene, frames, blend.parent / "before"),
              "looks": {n: _look(scene.sequence_editor.strips[n]) for n in ("cut1", "cut2", "cut3")},
              "fingerprint": be.fingerprint(scene)}
    wc = be.submodule("worker_client")
    jobs_seen: list[dict] = []
    run = wc.WorkerProcess.run
    wc.WorkerProcess.run = lambda self: (jobs_seen.append(self.job) if self.job.get("command") != "check"
                                         else None, run(self))[1]
    bpy.ops.ed.undo_push(message="before the press")
    try:
        t0 = time.monotonic()
        assert bpy.ops.lipsync.sync(*AS_UI) == {"FINISHED"}
        seconds = time.monotonic() - t0
    finally:
        wc.WorkerProcess.run = run
    scene = bpy.data.scenes["Cuts"]
    return {"blend": blend, "before": before, "jobs": jobs_seen, "seconds": seconds, "frames": frames,
            "after": _render_frames(scene, frames, blend.parent / "after")}


def test_one_press_one_engine_process_every_cut(pressed):
    (job,) = pressed["jobs"]  # one engine start for the whole edit, detection included
    assert job["command"] == "sync" and len(job["clips"]) == 3
    assert {Path(c["video"]).name for c in job["clips"]} == {"a.mp4", "b.mp4"}
    scene = bpy.data.scenes["Cuts"]
    for name in ("cut1", "cut2", "cut3"):
        strip = scene.sequence_editor.strips[name]
        assert strip.filepath.startswith("//lipsync/") and strip.get("lipsync_key"), name
        assert Path(bpy.path.abspath(strip.filepath)).is_file()
    # the dub under cut2 is both strips' sound, each at its place in the cut
    cut2 = next(c for c in job["clips"] if Path(c["video"]).name == "b.mp4")
    assert [(d["at"], d["seconds"], d["volume"]) for d in cut2["dub"]] == [(0.0, 0.56, 0.8), (0.76, 0.44, 1.0)]
    assert cut2["sync_ranges"] == [[5, 19], [24, 35]]
    print(f"press: {pressed['seconds']:.1f} s")


def test_results_look_exactly_like_their_strips(pressed):
    scene = bpy.data.scenes["Cuts"]
    for name, look in pressed["before"]["looks"].items():
        assert _look(scene.sequence_editor.strips[name]) == look, name
    ad = scene.animation_data
    bag = ad.action.layers[0].strips[0].channelbags[0]
    assert any(f.data_path == 'sequence_editor.strips_all["cut2"].blend_alpha' for f in bag.fcurves)
    before, after = pressed["before"]["render"], pressed["after"]
    # 5: cut1 face, no dub; 30: cut1 no face; 57: cut2 (scaled, graded, half faded) between the dub lines
    for f in (5, 30, 57):
        assert _psnr(before[f], after[f]) > 32, f
    for f in (20, 50, 80):  # lip-synced: only the mouth differs
        assert _psnr(before[f], after[f]) < 60, f
        assert _psnr(before[f][:90], after[f][:90]) > 32, f


def test_render_sound_is_the_dub_and_the_music(pressed, media, tmp_path):
    sr = 16000
    got = _mixdown(bpy.data.scenes["Cuts"], tmp_path / "mix.wav")
    at = lambda frame: int((frame - 1) / 25 * sr)  # noqa: E731  (the mixdown starts at frame 1)
    for lo, hi in (DUB1, DUB2):
        part = got[at(lo) + 800:at(hi) - 800]
        assert _tone_share(part, OWN_HZ) < 0.02, (lo, hi)  # the cuts' own sound is muted under the dub
        assert _tone_share(part, MUSIC_HZ) > 0.01, (lo, hi)  # the music stays
    assert _tone_share(got[at(1):at(DUB1[0])], OWN_HZ) > 0.2  # no dub there: the cut's own sound plays
    assert _tone_share(got[at(DUB1[1]) + 400:at(DUB2[0]) - 400], OWN_HZ) > 0.2


def test_second_press_changes_nothing_and_starts_no_engine(pressed, worker_jobs):
    scene = bpy.data.scenes["Cuts"]
    folder = Path(bpy.path.abspath("//lipsync"))
    files = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    before = be.fingerprint(scene)
    t0 = time.monotonic()
    assert bpy.ops.lipsync.sync() == {"FINISHED"}
    assert time.monotonic() - t0 < 5
    assert worker_jobs == []
    assert be.fingerprint(bpy.data.scenes["Cuts"]) == before
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == files


def test_changing_one_dub_strip_redoes_only_the_cuts_under_it(pressed, worker_jobs):
    scene = bpy.data.scenes["Cuts"]
    strips = scene.sequence_editor.strips
    cut1 = strips["cut1"].filepath
    strips["dub2"].volume = 0.7
    try:
        assert bpy.ops.lipsync.sync() == {"FINISHED"}
        (job,) = worker_jobs
        assert sorted((Path(c["video"]).name, c["start_frame"]) for c in job["clips"]) == [("a.mp4", 40),
                                                                                         ("b.mp4", 5)]
        assert strips["cut1"].filepath == cut1
    finally:
        strips["dub2"].volume = 1.0
        worker_jobs.clear()
    assert bpy.ops.lipsync.sync() == {"FINISHED"}  # back as before: the earlier results are reused
    assert worker_jobs == []


def test_restore_original_then_undo_to_before_the_press(pressed):
    scene = bpy.data.scenes["Cuts"]
    strips = scene.sequence_editor.strips
    for s in strips:
        s.select = s.name == "cut2"
    look = _look(strips["cut2"])
    assert bpy.ops.lipsync.restore_original() == {"FINISHED"}
    assert Path(strips["cut2"].filepath).name == "b.mp4" and "lipsync_original" not in strips["cut2"]
    assert _look(strips["cut2"]) == look
    assert not any(s.mute for s in strips if s.name.startswith("cut2.sound"))
    # the press pushed one undo step: undo it (and the restore) and the timeline is as before the press
    bpy.ops.ed.undo_push(message="after restore")
    while be.fingerprint(bpy.data.scenes["Cuts"]) != pressed["before"]["fingerprint"]:
        assert bpy.ops.ed.undo() == {"FINISHED"}
    scene = bpy.data.scenes["Cuts"]
    assert not any(s.get("lipsync_key") for s in scene.sequence_editor.strips)


def test_one_undo_restores_the_whole_press(configured, media):
    scene = _build("Undo", media)
    scene.lipsync.segment_source = "STRIP"
    bpy.ops.ed.undo_push(message="before")
    before = be.fingerprint(scene)
    assert bpy.ops.lipsync.sync(*AS_UI) == {"FINISHED"}
    assert be.fingerprint(bpy.data.scenes["Undo"]) != before
    bpy.ops.ed.undo()
    assert be.fingerprint(bpy.data.scenes["Undo"]) == before


def test_every_problem_is_listed_and_nothing_runs(configured, media, tmp_path, worker_jobs):
    from tools import sample_media as sm

    gone = tmp_path / "gone.mp4"
    gone.write_bytes((media / "b.mp4").read_bytes())
    fast = sm.write_video(tmp_path / "fast.mp4", sm.astronaut_frames(20), fps="30")
    scene = be.new_scene("Bad")
    coll = scene.sequence_editor.strips
    coll.new_movie("missing", str(gone), 1, 1)
    coll.new_movie("wrong fps", str(fast), 1, 50)
    coll.new_movie("no dub", str(media / "a.mp4"), 1, 200)
    coll.new_sound("dub", str(media / "speech.wav"), 3, 1)
    gone.unlink()
    before = be.fingerprint(scene)
    with pytest.raises(RuntimeError) as err:
        bpy.ops.lipsync.sync()
    msg = str(err.value)
    assert "problem(s); nothing was run" in msg
    for name in ("'missing': its file is missing", "'wrong fps': runs at 30.000 fps"):
        assert name in msg, msg
    assert worker_jobs == [] and be.fingerprint(bpy.data.scenes["Bad"]) == before
    # with the files fixed, the plan's own problems come next, again all together
    coll.remove(coll["missing"])
    coll.remove(coll["wrong fps"])
    dub2 = coll.new_sound("far dub", str(media / "speech.wav"), 4, 400)
    dub2.select = True
    scene.lipsync.segment_source = "MARKERS"
    with pytest.raises(RuntimeError, match=r"'no dub': no dub plays under it"):
        bpy.ops.lipsync.sync()
    assert worker_jobs == []
