"""The Blender worker process: JSON job in, JSON events out, cancel, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lipsync_core.media import probe
from tools import sample_media
from tools.random_weights import write_random_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_worker(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, LIPSYNC_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.Popen([sys.executable, "-m", "lipsync_core.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def events_of(proc, job, cancel_after_progress=False):
    proc.stdin.write(json.dumps(job) + "\n")
    proc.stdin.flush()
    events = []
    for line in proc.stdout:
        ev = json.loads(line)
        events.append(ev)
        if cancel_after_progress and ev["event"] == "progress" and ev["stage"] == "sync" and ev["done"] > 0:
            proc.stdin.write("cancel\n")
            proc.stdin.flush()
            cancel_after_progress = False
    proc.wait(timeout=300)
    return events


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("worker")
    tone = sample_media.tone_wav(d / "t.wav", 4, 300)
    clip = sample_media.face_noface_face_clip(d / "clip.mp4", 30, 20, 30, audio=tone)
    return {"dir": d, "clip": clip, "speech": sample_media.speech_wav(d / "s.wav", seconds=4.0),
            "ckpt": write_random_checkpoint(d / "w.pth")}


def test_segments_and_sync_clips(work, tmp_path):
    ev = events_of(start_worker(tmp_path), {"command": "segments", "video": str(work["clip"]),
                                            "options": {"detector": "opencv"}})
    assert ev[-1]["event"] == "result" and [s["face"] for s in ev[-1]["segments"]] == [True, False, True]
    assert sum(e["event"] in ("result", "error", "cancelled") for e in ev) == 1

    outs = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    job = {"command": "sync", "video": str(work["clip"]), "audio": str(work["speech"]),
           "checkpoint": str(work["ckpt"]), "options": {"detector": "opencv"},
           "clips": [{"start_frame": 0, "end_frame": 30, "audio_start": 0.0, "output": str(outs[0]), "face": True},
                     {"start_frame": 50, "end_frame": 80, "audio_start": 2.0, "output": str(outs[1]),
                      "face": True}]}
    ev = events_of(start_worker(tmp_path), job)
    assert ev[-1]["event"] == "result", ev[-1]
    assert [c["frames"] for c in ev[-1]["clips"]] == [30, 30]
    assert all(c["size"] == [320, 240] and c["pad"] == [0, 0] for c in ev[-1]["clips"])  # even: nothing to crop
    for out in outs:
        info = probe(str(out))
        assert info.frames == 30 and info.has_audio and abs(info.duration - 1.2) < 0.1


def test_cancel_leaves_nothing(work, tmp_path):
    out = tmp_path / "c.mp4"
    job = {"command": "sync", "video": str(work["clip"]), "audio": str(work["speech"]),
           "checkpoint": str(work["ckpt"]), "options": {"box": [100, 60, 220, 200], "batch_size": 4},
           "clips": [{"start_frame": 0, "end_frame": 80, "audio_start": 0.0, "output": str(out)}]}
    ev = events_of(start_worker(tmp_path), job, cancel_after_progress=True)
    assert ev[-1]["event"] == "cancelled"
    assert os.listdir(tmp_path) == ["cache"] or not any(p.endswith(".mp4") for p in os.listdir(tmp_path))


def test_errors_are_events(work, tmp_path):
    job = {"command": "sync", "video": str(work["clip"]), "audio": str(work["speech"]),
           "checkpoint": str(tmp_path / "missing.pth"),
           "clips": [{"start_frame": 0, "end_frame": 10, "output": str(tmp_path / "x.mp4")}]}
    proc = start_worker(tmp_path)
    ev = events_of(proc, job)
    assert ev[-1]["event"] == "error" and "checkpoint not found" in ev[-1]["message"]
    assert proc.returncode == 2
    proc = start_worker(tmp_path)
    proc.stdin.write("{not json\n")
    proc.stdin.flush()
    ev = [json.loads(x) for x in proc.stdout]
    assert ev[-1]["event"] == "error" and "not valid JSON" in ev[-1]["message"]


def test_unknown_option_is_refused_by_name(work, tmp_path):
    """A misspelt option (here `pad` for `pads`) must not be dropped silently, as the CLI refuses unknown flags."""
    out = tmp_path / "u.mp4"
    job = {"command": "sync", "video": str(work["clip"]), "audio": str(work["speech"]),
           "checkpoint": str(work["ckpt"]), "options": {"pad": [0, 20, 0, 0], "detector": "opencv"},
           "clips": [{"start_frame": 0, "end_frame": 10, "audio_start": 0.0, "output": str(out), "face": True}]}
    proc = start_worker(tmp_path)
    ev = events_of(proc, job)
    assert ev[-1]["event"] == "error" and "unknown option 'pad'" in ev[-1]["message"], ev[-1]
    assert "pads" in ev[-1]["message"] and proc.returncode == 2
    assert not out.exists()


def test_a_checkpoint_that_carries_code_is_an_error_event_saying_so(work, tmp_path, code_carrying_checkpoint):
    """The add-on shows the worker's message: it must say what the file is, not "corrupt, re-download"."""
    path, marker = code_carrying_checkpoint
    out = tmp_path / "x.mp4"
    job = {"command": "sync", "video": str(work["clip"]), "audio": str(work["speech"]), "checkpoint": str(path),
           "clips": [{"start_frame": 0, "end_frame": 10, "audio_start": 0.0, "output": str(out), "face": True}]}
    proc = start_worker(tmp_path)
    ev = events_of(proc, job)
    assert ev[-1]["event"] == "error" and proc.returncode == 2, ev[-1]
    assert "carries code" in ev[-1]["message"] and "corrupt" not in ev[-1]["message"]
    assert not marker.exists() and not out.exists()


def test_edit_job_many_files_one_process(work, tmp_path):
    """The edit form: clips from two files, each with its own mixed dub, auto segments, dub-limited ranges."""
    clip2 = sample_media.face_noface_face_clip(tmp_path / "clip2.mp4", 20, 10, 20)
    outs = [tmp_path / f"{n}.mp4" for n in "abc"]
    dub = [{"file": str(work["speech"]), "from": 0.5, "at": 0.2, "seconds": 0.6, "volume": 0.5},
           {"file": str(work["speech"]), "from": 2.0, "at": 0.6, "seconds": 2.0, "volume": 1.0}]
    job = {"command": "sync", "checkpoint": str(work["ckpt"]), "options": {"detector": "opencv"},
           "clips": [{"video": str(work["clip"]), "start_frame": 10, "end_frame": 70, "output": str(outs[0]),
                      "segments": "auto", "dub": dub, "sync_ranges": [[15, 70]]},
                     {"video": str(clip2), "start_frame": 0, "end_frame": 20, "output": str(outs[1]),
                      "segments": [{"start_frame": 0, "end_frame": 20, "face": None}], "dub": dub[:1]},
                     {"video": str(work["clip"]), "start_frame": 0, "end_frame": 30, "output": str(outs[2]),
                      "segments": "all", "dub": [], "sync_ranges": []}]}
    ev = events_of(start_worker(tmp_path), job)
    assert ev[-1]["event"] == "result", ev[-1]
    clips = ev[-1]["clips"]
    assert [c["frames"] for c in clips] == [60, 20, 30]
    assert [probe(str(o)).frames for o in outs] == [60, 20, 30]
    # auto segments inside the range: face to 30, no face 30-50, face from 50; synced only where the dub plays
    assert [(s["start_frame"], s["end_frame"], s["face"]) for s in clips[0]["segments"]] == [
        (10, 30, True), (30, 50, False), (50, 70, True)]
    assert 0 < clips[0]["face_frames"] <= (30 - 15) + 20
    assert clips[1]["segments"][0]["face"] is True and clips[1]["face_frames"] == 20
    assert clips[2]["face_frames"] == 0  # no dub under it: every frame keeps its picture
    stages = {e["stage"] for e in ev if e["event"] == "progress"}
    assert {"cut 1 of 3: sync", "cut 3 of 3: sync"} <= stages
    assert not list(tmp_path.glob("*.wav"))  # the muxed dub is a temporary file


def test_mix_dub_sums_parts_at_their_places(tmp_path):
    from lipsync_core.audio import load_audio
    from lipsync_core.sync import mix_dub

    wav = sample_media.tone_wav(tmp_path / "t.wav", 1.0, 200)
    mix = mix_dub([{"file": str(wav), "from": 0.0, "at": 0.5, "seconds": 0.25, "volume": 0.5},
                   {"file": str(wav), "from": 0.5, "at": 0.6, "seconds": 0.1, "volume": 1.0}], 1.0)
    src = load_audio(str(wav))
    assert len(mix) == 16000 and not mix[:8000].any() and not mix[12000:].any()
    np.testing.assert_allclose(mix[8000:9600], 0.5 * src[:1600], atol=2e-3)  # resampler edges
    np.testing.assert_allclose(mix[9600:11200], 0.5 * src[1600:3200] + src[8000:9600], atol=2e-3)


def test_segments_of_several_ranges_in_one_process(work, tmp_path):
    job = {"command": "segments", "options": {"detector": "opencv"},
           "clips": [{"video": str(work["clip"]), "start_frame": 0, "end_frame": 45},
                     {"video": str(work["clip"]), "start_frame": 35, "end_frame": 80}]}
    ev = events_of(start_worker(tmp_path), job)
    assert ev[-1]["event"] == "result", ev[-1]
    rows = [[(s["start_frame"], s["end_frame"], s["face"]) for s in c["segments"]] for c in ev[-1]["clips"]]
    assert rows == [[(0, 30, True), (30, 45, False)], [(35, 50, False), (50, 80, True)]]
    assert "cut 2 of 2: detect" in {e.get("stage") for e in ev if e["event"] == "progress"} or any(
        "cut 2 of 2" in e.get("message", "") for e in ev if e["event"] == "log")


def test_mix_dub_follows_a_keyframed_volume(tmp_path):
    from lipsync_core.audio import load_audio
    from lipsync_core.sync import mix_dub

    wav = sample_media.tone_wav(tmp_path / "t.wav", 1.0, 200)
    # 10 frames at 25 fps: volume 0 at the first frame rising to 1 at the last, linear in between
    mix = mix_dub([{"file": str(wav), "from": 0.0, "at": 0.0, "seconds": 0.4,
                    "volume": [k / 9 for k in range(10)]}], 0.4)
    src = load_audio(str(wav))[:6400]
    gain = np.interp(np.arange(6400) * 10 / 6400, np.arange(10), [k / 9 for k in range(10)])
    np.testing.assert_allclose(mix, gain * src, atol=2e-3)
