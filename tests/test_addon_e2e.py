"""End to end in bpy 5.0.1 with the real worker (`python -m lipsync_core.worker`) and a random-weight checkpoint.

These fail (never skip) when the worker is missing: the add-on is worthless without it.
"""

# ruff: noqa: F811  (pytest fixtures imported from blender_env come back as test arguments)
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import bpy
import numpy as np
import pytest

import blender_env as be
from blender_env import CLIP_FRAMES, FACE1, NOFACE, TONE_HZ, checkpoint, configured, lipsync_addon, made_media  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
TOL = 2  # frames: detection runs on every n-th frame and is refined at changes; allow a little slack
# timeline layout used below: the movie trimmed by 5 frames at its start, the speech placed at frame 6 and
# trimmed by 5 so it plays from frame 11 (0.2 s into speech.wav) to the movie's end
V0, V1 = 6, 1 + CLIP_FRAMES
A0 = 11
B1, B2 = 1 + FACE1, 1 + FACE1 + NOFACE  # face / no-face boundaries on the timeline
# bpy.ops calls from Python push no undo step unless asked to (the `undo` argument); a click in the UI does
AS_UI = ("EXEC_DEFAULT", True)


@pytest.fixture(scope="module", autouse=True)
def real_worker():
    worker = ROOT / "lipsync_core" / "worker.py"
    assert worker.is_file(), "the real worker (python -m lipsync_core.worker) is missing: these tests need it"


def _edit(name: str, media_dir: Path):
    scene = be.new_scene(name)
    movie, own, speech = be.add_edit(scene, media_dir, audio_at=A0 - 5)
    movie.frame_offset_start = V0 - 1
    own.frame_offset_start = V0 - 1
    speech.frame_offset_start = 5
    speech.frame_final_end = V1
    scene.frame_start, scene.frame_end = V0, V1 - 1
    return scene, movie, own, speech


def _near(got: list[tuple[int, str]], want: list[tuple[int, str]]) -> bool:
    return len(got) == len(want) and all(n1 == n2 and abs(f1 - f2) <= TOL for (f1, n1), (f2, n2) in zip(got, want))


def _own_markers(scene):
    return sorted((m.frame, m.name) for m in scene.timeline_markers if m.name.startswith("LS "))


# ---------------------------------------------------------------------------- one full edit, several checks


@pytest.fixture(scope="module")
def synced(lipsync_addon, checkpoint, made_media, tmp_path_factory):
    """Saved .blend, detect_segments then sync (markers): the state every check below starts from."""
    be.configure(checkpoint)
    blend = tmp_path_factory.mktemp("project") / "edit.blend"
    scene, *_ = _edit("E2E", made_media)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    scene = bpy.data.scenes["E2E"]
    scene.timeline_markers.new("my note", frame=60)
    scene.timeline_markers.new("LS face", frame=90)  # a stale marker of ours: must be replaced
    t0 = time.monotonic()
    assert bpy.ops.lipsync.detect_segments() == {"FINISHED"}
    t_detect = time.monotonic() - t0
    markers_after_detect = sorted((m.frame, m.name) for m in scene.timeline_markers)
    scene.lipsync.segment_source = "MARKERS"
    bpy.ops.ed.undo_push(message="before first run")
    before_sync = be.fingerprint(scene)
    t0 = time.monotonic()
    assert bpy.ops.lipsync.sync(*AS_UI) == {"FINISHED"}
    print(f"detect {t_detect:.1f} s, sync {time.monotonic() - t0:.1f} s")
    return {"blend": blend, "markers": markers_after_detect, "before_sync": before_sync}


def test_detect_places_named_markers_and_keeps_the_editors(synced):
    scene = bpy.data.scenes["E2E"]
    want = [(V0, "LS face"), (B1, "LS no face"), (B2, "LS face"), (V1, "LS end")]
    got = [(f, n) for f, n in synced["markers"] if n.startswith("LS ")]
    assert _near(got, want), got
    assert (60, "my note") in synced["markers"]
    assert (90, "LS face") not in synced["markers"]
    assert _near(_own_markers(scene), want)  # sync with MARKERS leaves them alone
    cache = Path(be.submodule("prefs").user_dir()) / "cache"  # the engine's detection cache: the extension's
    assert any(cache.rglob("*.json")), list(cache.rglob("*"))


def test_the_strip_shows_its_result_over_the_same_frames(synced):
    """The result design: the editor's own strip shows a result file covering exactly its visible range."""
    scene = bpy.data.scenes["E2E"]
    movie = scene.sequence_editor.strips["clip"]
    assert (movie.frame_final_start, movie.frame_final_end, movie.channel) == (V0, V1, 1)
    assert movie.filepath.startswith("//lipsync/"), movie.filepath  # beside the saved .blend, relative
    assert Path(bpy.path.abspath(movie.filepath)).is_file()
    assert movie["lipsync_original"].endswith("clip.mp4") and movie["lipsync_src_start"] == V0 - 1
    assert movie.frame_final_duration == movie.frame_duration  # the file holds exactly the visible range
    assert not any(s.get("lipsync_role") == "result" for s in be.strips(scene))  # no strip added


def test_own_sound_muted_under_new_audio_only(synced):
    snapshot = be.submodule("snapshot")
    scene = bpy.data.scenes["E2E"]
    movie, speech = scene.sequence_editor.strips["clip"], scene.sequence_editor.strips["speech"]
    pieces = sorted((s.frame_final_start, s.frame_final_end, s.mute) for s in snapshot.own_sound_strips(scene, movie))
    assert pieces == [(V0, A0, False), (A0, V1, True)]
    assert not speech.mute and not movie.mute


def _render(scene, out_dir: Path) -> Path:
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = 320, 240, 100
    if hasattr(r.image_settings, "media_type"):
        r.image_settings.media_type = "VIDEO"  # 5.0: before file_format
    r.image_settings.file_format = "FFMPEG"
    r.ffmpeg.format, r.ffmpeg.codec = "MPEG4", "H264"
    r.ffmpeg.audio_codec, r.ffmpeg.audio_channels, r.ffmpeg.audio_mixrate = "AAC", "MONO", 48000
    r.filepath = str(out_dir / "render_")
    with bpy.context.temp_override(scene=scene):
        assert bpy.ops.render.render(animation=True, scene=scene.name) == {"FINISHED"}
    found = list(out_dir.glob("render_*"))
    assert len(found) == 1, found
    return found[0]


def _decode_audio(path: Path, sr: int = 16000) -> np.ndarray:
    from lipsync_core.media import ffmpeg_exe

    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-ac", "1", "-ar", str(sr), "-f", "f32le",
                          "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.float32)


def _count_frames(path: Path) -> int:
    from lipsync_core.media import ffmpeg_exe

    out = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:v", "-f", "framemd5", "-"],
                         capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if line and not line.startswith("#"))


def test_render_has_every_frame_and_the_new_audio(synced, made_media, tmp_path):
    scene = bpy.data.scenes["E2E"]
    scene.frame_start, scene.frame_end = A0, V1 - 1  # where the new audio plays
    movie_path = _render(scene, tmp_path)
    assert _count_frames(movie_path) == V1 - A0
    sr = 16000
    got = _decode_audio(movie_path, sr)
    speech = _decode_audio(made_media / "speech.wav", sr)
    want = speech[int(0.2 * sr):int(0.2 * sr) + len(got)]  # timeline frame 11 plays speech.wav at 0.2 s
    n = min(len(got), len(want)) - sr // 5
    lags = range(-sr // 25, sr // 25 + 1, 4)  # within a frame: AAC priming may shift a little
    best = max(float(np.dot(got[max(0, k):max(0, k) + n], want[max(0, -k):max(0, -k) + n]))
               / (np.linalg.norm(got[max(0, k):max(0, k) + n]) * np.linalg.norm(want[max(0, -k):max(0, -k) + n])
                  + 1e-9) for k in lags)
    assert best > 0.9, f"rendered audio does not follow the new speech (best correlation {best:.2f})"
    t = np.arange(len(got)) / sr
    tone = 2 * abs(np.sum(got * np.exp(-2j * np.pi * TONE_HZ * t))) ** 2 / (len(got) * np.sum(got ** 2))
    assert tone < 0.05, f"the clip's own {TONE_HZ:.0f} Hz sound is still audible ({tone:.2f} of the energy)"


def test_second_run_changes_nothing_and_one_undo_restores(synced):
    scene = bpy.data.scenes["E2E"]
    after_first = be.fingerprint(scene)
    folder = Path(bpy.path.abspath("//lipsync"))
    files = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    scene.timeline_markers.new("probe", frame=3)  # only in the step pushed next: tells undo steps apart
    bpy.ops.ed.undo_push(message="before second run")
    before = be.fingerprint(scene)
    t0 = time.monotonic()
    assert bpy.ops.lipsync.sync(*AS_UI) == {"FINISHED"}
    assert time.monotonic() - t0 < 5  # nothing changed: no engine
    assert be.fingerprint(bpy.data.scenes["E2E"]) == before
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == files
    bpy.ops.ed.undo()
    assert be.fingerprint(bpy.data.scenes["E2E"]) == before
    bpy.ops.ed.undo()
    assert be.fingerprint(bpy.data.scenes["E2E"]) == after_first
    bpy.ops.ed.undo()  # the first run's one step: back to before any lip sync
    assert be.fingerprint(bpy.data.scenes["E2E"]) == synced["before_sync"]


def test_hand_placed_markers_are_labelled_by_detection(configured, made_media):
    scene, *_ = _edit("Hand", made_media)
    for f, n in ((V0, "cut 1"), (B1, "cut 2"), (B2, "cut 3"), (V1, "cut 4")):
        scene.timeline_markers.new(n, frame=f)
    scene.lipsync.segment_source = "MARKERS"
    assert bpy.ops.lipsync.sync() == {"FINISHED"}
    scene = bpy.data.scenes["Hand"]
    record = Path(bpy.path.abspath(scene.sequence_editor.strips["clip"].filepath) + ".json")
    rows = json.loads(record.read_text())["clip"]["segments"]  # the engine's record beside the result
    segs = [(r["start_frame"] + 1, r["end_frame"] + 1, r["face"]) for r in rows]
    assert segs == [(V0, B1, True), (B1, B2, False), (B2, V1, True)]  # the no-face segment is left alone
    assert sorted(m.name for m in scene.timeline_markers) == ["cut 1", "cut 2", "cut 3", "cut 4"]


def test_auto_detects_marks_and_syncs(configured, made_media):
    scene, *_ = _edit("Auto", made_media)
    scene.lipsync.segment_source = "AUTO"
    assert bpy.ops.lipsync.sync() == {"FINISHED"}
    scene = bpy.data.scenes["Auto"]
    assert scene.sequence_editor.strips["clip"].get("lipsync_key")
    assert _near(_own_markers(scene), [(V0, "LS face"), (B1, "LS no face"), (B2, "LS face"), (V1, "LS end")])


def test_no_face_anywhere_is_refused(configured, tmp_path):
    from tools import sample_media as media

    clip = media.write_video(tmp_path / "noface.mp4", media.noface_frames(50))
    speech = media.speech_wav(tmp_path / "s.wav", seconds=2.0)
    scene = be.new_scene("NoFace")
    coll = scene.sequence_editor.strips
    movie = coll.new_movie("noface", str(clip), 1, 1)
    coll.new_sound("s", str(speech), 2, 1)
    scene.sequence_editor.active_strip = movie
    before = be.fingerprint(scene)
    with pytest.raises(RuntimeError, match="No face anywhere"):
        bpy.ops.lipsync.detect_segments()
    scene.lipsync.segment_source = "AUTO"
    with pytest.raises(RuntimeError, match="No face anywhere"):
        bpy.ops.lipsync.sync()
    assert be.fingerprint(bpy.data.scenes["NoFace"]) == before


# ---------------------------------------------------------------------------- the interface's job path


def _run_interactive(scene_name: str, stop, timeout: float = 120.0):
    """What the modal operator does, pumped by hand (timers do not run headless); `stop(job)` once it runs."""
    ops, jobs = be.submodule("ops"), be.submodule("jobs")
    job = ops.start_job(bpy.context, "sync")
    assert not bpy.ops.lipsync.sync.poll(), "a second job could start while one runs"
    assert bpy.data.scenes[scene_name].lipsync.running
    deadline = time.monotonic() + timeout
    stopped = False
    while not ops.pump(bpy.context, job):
        assert time.monotonic() < deadline, "job did not end"
        if not stopped and job.steps.worker is not None and job.steps.worker.proc is not None \
                and job.total:
            stop(job)
            stopped = True
        time.sleep(0.05)
    assert stopped, "the job ended before it could be stopped"
    result, level, msg = ops.conclude(bpy.context, job, job.outcome)
    assert jobs.current is None
    return job, result, level, msg


def test_cancel_leaves_nothing_behind(configured, made_media):
    scene, *_ = _edit("Cancel", made_media)
    scene.lipsync.segment_source = "STRIP"
    scene.lipsync.pads = (0, 11, 0, 0)  # inputs of its own: no earlier result to reuse
    before = be.fingerprint(scene)
    job, result, level, msg = _run_interactive("Cancel", lambda job: bpy.ops.lipsync.cancel())
    assert result == {"CANCELLED"} and level == "WARNING" and "Cancelled" in msg
    assert be.fingerprint(bpy.data.scenes["Cancel"]) == before
    assert job.steps.job_dir is not None and not job.steps.job_dir.exists()
    assert not bpy.data.scenes["Cancel"].lipsync.running


def test_killed_worker_is_reported_and_changes_nothing(configured, made_media):
    scene, *_ = _edit("Killed", made_media)
    scene.lipsync.segment_source = "STRIP"
    scene.lipsync.pads = (0, 12, 0, 0)  # inputs of its own: no earlier result to reuse
    before = be.fingerprint(scene)
    job, result, level, msg = _run_interactive("Killed", lambda job: job.steps.kill_worker())
    assert result == {"CANCELLED"} and level == "ERROR"
    assert "killed by signal 9" in msg and "not changed" in msg
    assert be.fingerprint(bpy.data.scenes["Killed"]) == before
    assert not job.steps.job_dir.exists()


def _modal(cls):
    """The registered operator's own invoke/modal code on a stand-in instance (headless: no event loop)."""
    import types
    from types import SimpleNamespace

    reports = []
    op = SimpleNamespace(command=cls.command, report=lambda level, msg: reports.append((set(level), msg)))
    for name in ("_begin", "make_steps", "modal", "cancel", "_end_modal", "_fail", "_request_cancel", "_advance",
                 "_finish"):
        setattr(op, name, types.MethodType(getattr(cls, name), op))
    return op, reports


def _drive(op, on_first_progress=None, timeout: float = 180.0):
    from types import SimpleNamespace

    timer = SimpleNamespace(type="TIMER", value="NOTHING")
    deadline = time.monotonic() + timeout
    fired = False
    while True:
        result = op.modal(bpy.context, timer)
        if result not in ({"PASS_THROUGH"}, {"RUNNING_MODAL"}):
            return result
        if on_first_progress and not fired and op._job.total:
            fired = True
            on_first_progress()
        assert time.monotonic() < deadline, "modal job did not end"
        time.sleep(0.05)


def test_modal_sync_runs_and_applies_on_the_main_thread(configured, made_media):
    scene, *_ = _edit("Modal", made_media)
    scene.lipsync.segment_source = "STRIP"
    scene.lipsync.pads = (0, 13, 0, 0)  # inputs of its own: no earlier result to reuse
    op, reports = _modal(bpy.types.LIPSYNC_OT_sync)
    assert op._begin(bpy.context) == {"RUNNING_MODAL"}
    assert bpy.ops.lipsync.cancel.poll() and not bpy.ops.lipsync.detect_segments.poll()  # one job at a time
    seen_running = []
    result = _drive(op, on_first_progress=lambda: seen_running.append(
        (bpy.data.scenes["Modal"].lipsync.running, bpy.data.scenes["Modal"].lipsync.stage)))
    assert result == {"FINISHED"}, reports
    assert seen_running and seen_running[0][0] and seen_running[0][1]
    assert reports[-1][0] == {"INFO"} and "1 of 1 cut(s) now show their lip-synced result" in reports[-1][1]
    movie = bpy.data.scenes["Modal"].sequence_editor.strips["clip"]
    assert (movie.frame_final_start, movie.frame_final_end) == (V0, V1) and movie.get("lipsync_key")
    assert not bpy.data.scenes["Modal"].lipsync.running and bpy.ops.lipsync.sync.poll()


def test_modal_escape_cancels(configured, made_media):
    from types import SimpleNamespace

    scene, *_ = _edit("Esc", made_media)
    scene.lipsync.segment_source = "STRIP"
    scene.lipsync.pads = (0, 14, 0, 0)  # inputs of its own: no earlier result to reuse
    before = be.fingerprint(scene)
    op, _ = _modal(bpy.types.LIPSYNC_OT_sync)
    assert op._begin(bpy.context) == {"RUNNING_MODAL"}
    esc = SimpleNamespace(type="ESC", value="PRESS")
    result = _drive(op, on_first_progress=lambda: op.modal(bpy.context, esc))
    assert result == {"CANCELLED"}
    assert be.fingerprint(bpy.data.scenes["Esc"]) == before
    assert not op._job.steps.job_dir.exists()


def test_ctrl_c_in_a_background_run_stops_the_worker(configured, made_media):
    ops, job_steps = be.submodule("ops"), be.submodule("job_steps")
    scene, *_ = _edit("Interrupt", made_media)
    scene.lipsync.segment_source = "STRIP"
    scene.lipsync.pads = (0, 15, 0, 0)  # inputs of its own: no earlier result to reuse
    before = be.fingerprint(scene)
    seen = {}

    def emit(ev):  # stands in for the terminal's Ctrl+C arriving while the engine works
        worker = seen["steps"].worker
        if ev.get("event") == "progress" and ev.get("total") and worker is not None:
            seen["proc"] = worker.proc
            raise KeyboardInterrupt

    steps = seen["steps"] = job_steps.JobSteps(ops.prepare(bpy.context, "sync"), "sync", emit)
    with pytest.raises(KeyboardInterrupt):
        steps.run()
    assert seen["proc"].wait(timeout=10) is not None  # the engine did not outlive the interrupted run
    assert not steps.job_dir.exists()
    assert be.fingerprint(bpy.data.scenes["Interrupt"]) == before


class _RunsACommand:
    """Unpickling this runs a shell command: a checkpoint that carries code (harmless here: it makes a file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        import os
        import shlex

        return (os.system, (f"touch {shlex.quote(str(self.path))}",))


def test_a_checkpoint_that_carries_code_is_refused_with_the_workers_own_message(configured, made_media, tmp_path):
    import re

    import torch

    from lipsync_core.errors import LipsyncError
    from lipsync_core.model import load_model

    ran = tmp_path / "the payload ran"
    evil = tmp_path / "wav2lip_gan.pth"
    torch.save({"state_dict": _RunsACommand(ran)}, evil)
    with pytest.raises(LipsyncError) as engine_says:  # what the engine itself says about this file
        load_model(evil)
    expected = str(engine_says.value)
    assert "carries code" in expected
    assert not ran.exists()

    configured.checkpoint_path = str(evil)
    scene, *_ = _edit("Evil", made_media)
    scene.lipsync.segment_source = "STRIP"
    scene.lipsync.pads = (0, 16, 0, 0)  # inputs of its own: no earlier result to reuse
    before = be.fingerprint(scene)
    ops, job_steps = be.submodule("ops"), be.submodule("job_steps")
    steps = job_steps.JobSteps(ops.prepare(bpy.context, "sync"), "sync")
    outcome = steps.run()  # the real worker process
    assert outcome.status == "error" and outcome.message == expected  # passed on as it is, nothing added
    assert steps.job_dir is not None and not steps.job_dir.exists()
    with pytest.raises(RuntimeError, match=re.escape(expected.splitlines()[0])):  # the operator reports it
        bpy.ops.lipsync.sync()
    assert not ran.exists(), "the checkpoint's code ran"
    assert be.fingerprint(bpy.data.scenes["Evil"]) == before


def test_ffv1_preference_places_a_lossless_result_blender_renders(configured, made_media, tmp_path):
    """Result encoding FFV1: the press writes an .mkv (FFV1 + FLAC) result, and Blender plays it: a rendered
    frame shows the result (its new mouth) and, above the face, exactly the movie's picture."""
    import cv2

    from lipsync_core.media import FrameReader, ffprobe_exe

    scene, movie, _, speech = _edit("Lossless", made_media)
    name = movie.name
    speech.frame_final_end = A0 + 12  # a short dub: the check needs a few frames
    scene.lipsync.segment_source = "STRIP"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 320, 240, 100
    configured.result_encoding = "FFV1"
    try:
        assert bpy.ops.lipsync.sync() == {"FINISHED"}
    finally:
        configured.result_encoding = "H264"
    scene = bpy.data.scenes["Lossless"]
    res = scene.sequence_editor.strips[name]  # the cut itself now shows its result file
    assert res.get("lipsync_key")
    path = Path(bpy.path.abspath(res.filepath))
    assert path.suffix == ".mkv"
    codecs = subprocess.run([ffprobe_exe(), "-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0",
                             str(path)], capture_output=True, text=True, check=True).stdout.split()
    assert codecs == ["ffv1", "flac"]

    def still(name):
        scene.render.image_settings.file_format = "PNG"
        scene.render.filepath = str(tmp_path / name)
        with bpy.context.temp_override(scene=scene):
            bpy.ops.render.render(write_still=True, scene=scene.name)
        return cv2.imread(str(tmp_path / name)).astype(int)

    frame = A0 + 5
    scene.frame_set(frame)
    got = still("result.png")
    k = frame - res.frame_final_start  # the result file holds exactly the cut's visible frames
    own = next(iter(FrameReader(str(path), start_frame=k, end_frame=k + 1))).astype(int)
    be.submodule("apply").restore_original(res)
    movie_px = still("movie.png")
    assert np.abs(got - movie_px).max() > 30  # the result is what renders (the mouth differs)
    assert np.abs(got - own).mean() < 2  # and it is the result file's frame, as ffmpeg decodes it
    assert np.abs(got[:30] - movie_px[:30]).max() <= 2  # above the face: the movie's own picture


def test_odd_sized_cut_result_lines_up_with_its_movie(configured, made_media, tmp_path):
    """A 321x241 cut: the result (H.264, written 4:4:4 since 4:2:0 holds only even sizes) has the movie's exact
    size, so a render with it matches a render of the movie away from the mouth (a padded, shifted result would
    not)."""
    import cv2

    from lipsync_core.media import ffmpeg_exe, probe
    from tools import sample_media

    w, h, n = 321, 241, 12
    src = tmp_path / "odd.mkv"  # FFV1 4:2:0 keeps the odd size, like the camera files editors cut
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}",
                    "-r", "25", "-i", "-", "-c:v", "ffv1", "-pix_fmt", "yuv420p", str(src)],
                   input=sample_media.astronaut_frames(n, w, h).tobytes(), check=True)
    scene = be.new_scene("OddCut")
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = w, h, 100
    scene.frame_start, scene.frame_end = 1, n
    coll = scene.sequence_editor.strips
    cut = coll.new_movie("odd", str(src), 1, 1)
    coll.new_sound("speech", str(made_media / "speech.wav"), 2, 1).frame_final_end = 1 + n
    scene.lipsync.segment_source = "STRIP"

    def still(name):
        scene.render.image_settings.file_format = "PNG"
        scene.render.filepath = str(tmp_path / name)
        with bpy.context.temp_override(scene=scene):
            bpy.ops.render.render(write_still=True, scene=scene.name)
        return cv2.imread(str(tmp_path / name)).astype(np.float64)

    def psnr(a, b):
        mse = float(np.mean((a - b) ** 2))
        return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)

    scene.frame_set(6)
    movie_px = still("movie.png")
    assert bpy.ops.lipsync.sync() == {"FINISHED"}
    scene = bpy.data.scenes["OddCut"]
    res = scene.sequence_editor.strips[cut.name]
    assert res.get("lipsync_key")
    info = probe(bpy.path.abspath(res.filepath))
    assert (info.width, info.height, info.pix_fmt) == (w, h, "yuv444p")
    scene.frame_set(6)
    got = still("result.png")
    assert got.shape == movie_px.shape == (h, w, 3)
    away = psnr(got[:80], movie_px[:80])  # above the face's lower half: the movie's picture, re-encoded
    print(f"odd-size cut, render vs movie above the mouth: {away:.1f} dB")
    assert away > 38, away
    assert np.abs(got - movie_px).max() > 30  # the result is what renders (the mouth differs)
