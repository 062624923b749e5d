"""`python -m lipsync_core batch`: JOBS.json checks, local runs, resume, and a real two-node Ray cluster (also for
the Blender extension's Export Batch -> the farm -> Import Batch Results, at the end)."""

# ruff: noqa: F811  (pytest fixtures imported from other test modules come back as test arguments)

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import bpy
import numpy as np
import pytest
from test_addon_batch import AS_UI, CUTS, _build, _frames, _psnr, _state, farm_media  # noqa: F401  (a fixture)

import blender_env as be  # the installed extension (conftest points Blender's user folder at a temp one)
from blender_env import checkpoint, lipsync_addon  # noqa: F401  (fixtures)
from lipsync_core import audio as A
from lipsync_core import cli, provenance
from lipsync_core.media import FrameReader, probe
from tools import sample_media as media
from tools.random_weights import shared_checkpoint
from tools.ray_cluster import processes

ROOT = Path(__file__).resolve().parents[1]
W, H = 160, 120
BOX = [40, 10, 120, 100]
# the same engine settings everywhere: no bf16 check, per-test detection cache
ENV = {"LIPSYNC_PRECISION": "fp32"}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    m = d / "media"
    m.mkdir()
    media.write_video(m / "a.mp4", media.astronaut_frames(40, W, H))
    media.write_video(m / "b.mp4", media.astronaut_frames(30, W, H, motion=2.0))
    media.speech_wav(m / "speech.wav", seconds=3.0)
    media.tone_wav(m / "tone.wav", 3.0, 330.0)
    ckpt = shared_checkpoint(tmp_path_factory)
    return {"dir": d, "ckpt": ckpt}


def jobs_doc(work, out: str, **overrides) -> dict:
    """Six good jobs (whole clips, ranges, per-job options) and one with a missing video."""
    doc = {"version": 1, "checkpoint": os.path.relpath(work["ckpt"], work["dir"]),
           "options": {"box": BOX, "detector": "opencv"},
           "jobs": [
               {"id": "whole_a", "video": "media/a.mp4", "audio": "media/speech.wav", "output": f"{out}/whole_a.mp4"},
               {"id": "whole_b", "video": "media/b.mp4", "audio": "media/tone.wav", "output": f"{out}/whole_b.mp4",
                "options": {"crf": 23}},
               {"id": "range_a", "video": "media/a.mp4", "audio": "media/speech.wav", "output": f"{out}/range_a.mp4",
                "start": 0.4, "end": 1.2},
               {"id": "dub_b", "video": "media/b.mp4", "audio": "media/speech.wav", "output": f"{out}/dub_b.mp4",
                "audio_start": 1.0},
               {"id": "box_a", "video": "media/a.mp4", "audio": "media/tone.wav", "output": f"{out}/box_a.mp4",
                "options": {"blend": "box", "x264_preset": "ultrafast"}},
               {"id": "sub_b", "video": "media/b.mp4", "audio": "media/speech.wav",
                "output": f"{out}/sub/sub_b.mp4", "start": 0.2, "end": 1.0, "audio_start": 0.5},
               {"id": "missing", "video": "media/missing.mp4", "audio": "media/speech.wav",
                "output": f"{out}/missing.mp4"},
           ]}
    doc.update(overrides)
    return doc


# what each good job's output must hold: (source, first frame, frames, audio file, audio start seconds)
EXPECT = {"whole_a": ("a", 0, 40, "speech", 0.0), "whole_b": ("b", 0, 30, "tone", 0.0),
          "range_a": ("a", 10, 20, "speech", 0.4), "dub_b": ("b", 0, 30, "speech", 1.0),
          "box_a": ("a", 0, 40, "tone", 0.0), "sub_b": ("b", 5, 20, "speech", 0.5)}


def write_jobs(work, name: str, doc: dict) -> Path:
    path = work["dir"] / name
    path.write_text(json.dumps(doc))
    return path


def run_cli(args: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(ROOT), **ENV, **(env or {}))
    return subprocess.run([sys.executable, "-m", "lipsync_core", "batch", *args], env=e, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def frames_of(path) -> np.ndarray:
    with FrameReader(str(path)) as r:
        return np.stack(list(r))


def report_of(path) -> dict:
    return {j["id"]: j for j in json.loads(Path(path).read_text())["jobs"]}


def check_outputs(work, out: Path) -> None:
    """Each good output: its frames and size, the picture changed only around the mouth, the dub as its sound."""
    for jid, (src, first, n, dub, a0) in EXPECT.items():
        path = out / ("sub" if jid == "sub_b" else "") / f"{jid}.mp4"
        info = probe(str(path))
        assert (info.frames, info.width, info.height) == (n, W, H), jid
        got = frames_of(path).astype(np.float32)
        source = frames_of(work["dir"] / "media" / f"{src}.mp4")[first : first + n].astype(np.float32)
        x1, y1, x2, y2 = BOX
        inside = np.abs(got - source)[:, (y1 + y2) // 2 : y2, x1:x2].mean()
        outside = np.abs(got - source)[:, :, : x1 - 2].mean()
        assert inside > 5 * outside and outside < 3, (jid, inside, outside)
        heard = A.load_audio(str(path))
        want = A.load_audio(str(work["dir"] / "media" / f"{dub}.wav"), offset=a0, duration=n / 25)
        k = min(len(heard), len(want))
        assert abs(len(heard) - len(want)) < 400, jid
        corr = np.corrcoef(heard[:k], want[:k])[0, 1]
        assert corr > 0.9, (jid, corr)


# ------------------------------------------------------------------------------------- JOBS.json checks


BAD = [
    ("unknown job key", lambda d: d["jobs"][1].update(colour="red"), ['job "whole_b"', '"colour"']),
    ("unknown option", lambda d: d["jobs"][2].update(options={"sharpen": 1}), ['job "range_a"', '"sharpen"']),
    ("bad crf", lambda d: d["jobs"][1]["options"].update(crf=60), ['job "whole_b"', '"crf"', "0 (lossless) to 51"]),
    ("bad preset", lambda d: d["jobs"][4]["options"].update(x264_preset="warp"), ['job "box_a"', '"x264_preset"']),
    ("bad box", lambda d: d["jobs"][0].update(options={"box": [1, 2, 3]}), ['job "whole_a"', '"box"']),
    ("bad batch option", lambda d: d["options"].update(blend="soft"), ["batch-wide", '"blend"']),
    ("bad version", lambda d: d.update(version=2), ['"version"']),
    ("missing audio", lambda d: d["jobs"][3].pop("audio"), ['job "dub_b"', '"audio" is missing']),
    ("reversed range", lambda d: d["jobs"][2].update(start=1.0, end=0.5), ['job "range_a"', '"end"']),
    ("text start", lambda d: d["jobs"][2].update(start="0:01"), ['job "range_a"', '"start"']),
    ("same id", lambda d: d["jobs"][1].update(id="whole_a"), ['job "whole_a"', "id"]),
    ("same output", lambda d: d["jobs"][1].update(output=d["jobs"][0]["output"]), ['job "whole_b"', "whole_a"]),
    ("flag not bool", lambda d: d["jobs"][0].update(options={"no_smooth": "yes"}), ['"no_smooth"', "true or false"]),
    ("bad face range", lambda d: d["jobs"][2].update(face_ranges=[{"start": 1, "end": 0.5, "face": True}]),
     ['job "range_a"', '"face_ranges"']),
    ("bad dub range", lambda d: d["jobs"][2].update(dub_ranges=[[0.5]]), ['job "range_a"', '"dub_ranges"']),
]


@pytest.mark.parametrize("name,change,words", BAD, ids=[b[0] for b in BAD])
def test_bad_jobs_file_is_refused_whole(work, tmp_path, capsys, name, change, words):
    doc = jobs_doc(work, str(tmp_path / "out"))
    change(doc)
    path = write_jobs(work, f"bad_{name.replace(' ', '_')}.json", doc)
    report = tmp_path / "report.json"
    assert cli.main(["batch", str(path), "--report", str(report)]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "out").exists() and not report.exists()  # nothing run, nothing written


def test_jobs_file_that_is_not_json(work, tmp_path, capsys):
    path = tmp_path / "jobs.json"
    path.write_text('{"version": 1, "jobs": [')
    assert cli.main(["batch", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_options_are_the_sync_commands():
    from lipsync_core.batch import option_names, parse_options

    names = option_names()
    assert {"segments", "box", "pads", "blend", "detector", "face", "match", "crf", "x264_preset", "batch_size",
            "device", "no_smooth"} <= set(names)
    o = parse_options({"crf": 0, "x264_preset": "veryslow", "pads": [0, 5, -2, 0], "no_smooth": True,
                       "detect_max_every": None}, "t")
    assert (o.crf, o.preset, o.pads, o.smooth) == (0, "veryslow", (0, 5, -2, 0), False)
    assert parse_options({"exact_size": True, "codec": "ffv1"}, "t").exact_size is True  # the add-on's results
    assert parse_options({}, "t").exact_size is False


# ------------------------------------------------------------------------------------------- local runs


@pytest.fixture(scope="module")
def local_run(work):
    """The batch run here, without Ray: the reference the Ray run is compared with."""
    path = write_jobs(work, "local.json", jobs_doc(work, "local"))
    report = work["dir"] / "local_report.json"
    # torch on one thread, as in a Ray task that asks for 1 CPU (Ray sets OMP_NUM_THREADS to it): fp32 sums
    # then run in the same order, and the outputs can be compared bit for bit
    r = run_cli([str(path), "--report", str(report), "--json-progress"], env={"OMP_NUM_THREADS": "1"})
    return {"jobs": path, "report": report, "proc": r, "out": work["dir"] / "local"}


def test_local_batch(work, local_run):
    r = local_run["proc"]
    assert r.returncode == 1, r.stderr[-3000:]  # one job failed
    rep = report_of(local_run["report"])
    assert rep["missing"]["status"] == "failed" and "missing.mp4 does not exist" in rep["missing"]["message"]
    for jid, (_, _, n, _, _) in EXPECT.items():
        assert rep[jid]["status"] == "done", rep[jid]
        assert rep[jid]["frames"] == n and rep[jid]["node"] == "local" and rep[jid]["device"] == "cpu"
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[-1]["event"] == "result" and events[-1]["failed"] == 1 and events[-1]["done"] == 6
    # one model load per engine setting (feather, and box for box_a), however the jobs are ordered
    assert sum("generator on" in e.get("message", "") for e in events) == 2
    check_outputs(work, local_run["out"])
    leftovers = [p.name for p in local_run["out"].rglob("*") if p.name.startswith(".")]
    assert not leftovers


def test_rerun_skips_and_a_changed_option_redoes_only_its_job(work, local_run):
    # the outputs and records moved elsewhere (as a batch folder copied to shared storage) are still current
    out = work["dir"] / "moved"
    shutil.copytree(local_run["out"], out)
    path = write_jobs(work, "moved.json", jobs_doc(work, "moved"))
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    t0 = time.monotonic()
    r = run_cli([str(path), "--report", str(work["dir"] / "again.json")])
    assert r.returncode == 1 and time.monotonic() - t0 < 30
    rep = report_of(work["dir"] / "again.json")
    assert {j: rep[j]["status"] for j in EXPECT} == {j: "skipped" for j in EXPECT}
    assert rep["whole_a"]["frames"] == 40 and rep["whole_a"]["node"] == "local"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")} == mtimes

    doc = jobs_doc(work, "moved")
    doc["jobs"][0]["options"] = {"crf": 30}  # whole_a only
    (out / "dub_b.mp4").write_bytes(b"not the output it was")  # a replaced output is redone too
    path = write_jobs(work, "changed.json", doc)
    r = run_cli([str(path), "--report", str(work["dir"] / "changed_report.json")])
    rep = report_of(work["dir"] / "changed_report.json")
    assert {j: rep[j]["status"] for j in EXPECT} == {
        "whole_a": "done", "whole_b": "skipped", "range_a": "skipped", "dub_b": "done", "box_a": "skipped",
        "sub_b": "skipped"}, r.stderr[-2000:]
    rec = provenance.read_record(out / "whole_a.mp4")
    assert rec["made_from"]["options"]["crf"] == 30 and rec["frames"] == 40


def test_record_key_follows_what_the_output_is_made_of(work, tmp_path):
    from lipsync_core.batch import load_batch, prepare

    batch = load_batch(write_jobs(work, "keys.json", jobs_doc(work, str(tmp_path))))
    jobs = {j.id: j for j in batch.jobs}
    key = prepare(jobs["range_a"], batch.checkpoint).key
    assert prepare(jobs["range_a"], batch.checkpoint).key == key
    jobs["range_a"].audio_start = 0.5  # other dub samples
    assert prepare(jobs["range_a"], batch.checkpoint).key != key
    jobs["range_a"].audio_start = None
    jobs["range_a"].options.device = "cpu"  # where it runs is not what it is
    assert prepare(jobs["range_a"], batch.checkpoint).key == key
    jobs["range_a"].options.face_at = (60.0, 40.0)  # another face
    assert prepare(jobs["range_a"], batch.checkpoint).key != key
    jobs["range_a"].options.face_at = None
    jobs["range_a"].dub_ranges = [(0.4, 0.8)]  # a cut of an edit: the mouth redone only under its dub
    assert prepare(jobs["range_a"], batch.checkpoint).key != key
    jobs["range_a"].dub_ranges = None
    # a copy of the inputs somewhere else is the same content: the key does not hold paths
    copy = tmp_path / "copy.mp4"
    copy.write_bytes((work["dir"] / "media" / "a.mp4").read_bytes())
    jobs["range_a"].video = str(copy)
    assert prepare(jobs["range_a"], batch.checkpoint).key == key


# ------------------------------------------------------------------------------------ a real Ray cluster


@pytest.fixture(scope="module")
def ray_cluster(work):
    pytest.importorskip("ray", reason='Ray is not installed (pip install ".[farm]")')
    from tools.ray_cluster import LocalRayCluster

    cluster = LocalRayCluster(nodes=2, cpus=1, env={"PYTHONPATH": str(ROOT), **ENV,
                                                     "LIPSYNC_CACHE_DIR": str(work["dir"] / "cache")})
    yield cluster
    cluster.stop()
    assert not cluster.pids(), "the test's Ray processes are gone"


def test_ray_batch_equals_local(work, local_run, ray_cluster):
    path = write_jobs(work, "ray.json", jobs_doc(work, "ray"))
    report = work["dir"] / "ray_report.json"
    r = run_cli([str(path), "--ray", "auto", "--report", str(report)], env={"RAY_ADDRESS": ray_cluster.address})
    assert r.returncode == 1, r.stderr[-3000:]
    rep = report_of(report)
    assert rep["missing"]["status"] == "failed" and "does not exist" in rep["missing"]["message"]
    assert all(rep[j]["status"] == "done" for j in EXPECT), rep
    assert len({rep[j]["node"] for j in EXPECT}) == 2, "both nodes ran jobs"
    out = work["dir"] / "ray"
    check_outputs(work, out)
    for jid in EXPECT:  # the same pictures as the local run: fp32 on one thread each, same x264 settings
        sub = "sub" if jid == "sub_b" else ""
        a = frames_of(out / sub / f"{jid}.mp4")
        b = frames_of(local_run["out"] / sub / f"{jid}.mp4")
        assert a.shape == b.shape and np.array_equal(a, b), jid

    t0 = time.monotonic()  # everything current: skipped without starting a task
    r = run_cli([str(path), "--ray", "auto", "--report", str(report)], env={"RAY_ADDRESS": ray_cluster.address})
    assert r.returncode == 1 and time.monotonic() - t0 < 30
    assert all(report_of(report)[j]["status"] == "skipped" for j in EXPECT)


def test_ray_retries_a_killed_worker(work, ray_cluster):
    path = write_jobs(work, "kill.json", jobs_doc(work, "kill"))
    report = work["dir"] / "kill_report.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS=ray_cluster.address, **ENV)
    proc = subprocess.Popen([sys.executable, "-m", "lipsync_core", "batch", str(path), "--ray", "auto",
                             "--retries", "2", "--report", str(report)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 120
    try:
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            running = ray_cluster.workers_running("ray::lipsync_job")
            if running:
                time.sleep(0.3)  # well inside the job: its partial output exists
                if running[0] in ray_cluster.workers_running("ray::lipsync_job"):
                    os.kill(running[0], signal.SIGKILL)
                    killed = running[0]
            time.sleep(0.05)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed, "no running job was seen to kill"
    assert proc.returncode == 1, err[-3000:]
    rep = report_of(report)
    assert all(rep[j]["status"] == "done" for j in EXPECT), rep  # the killed job ran again
    check_outputs(work, work["dir"] / "kill")
    time.sleep(1.0)  # the killed attempt's ffmpeg processes end on their closed pipes; then nothing of it stays
    kill_dir = str(work["dir"] / "kill")
    assert not [pid for pid, (_, cmd) in processes().items() if "ffmpeg" in cmd and kill_dir in cmd]
    leftovers = [p.name for p in (work["dir"] / "kill").rglob("*") if PARTIAL in p.name]
    assert leftovers == [] or run_and_clean(path, ray_cluster)


PARTIAL = ".lipsync-partial"


def run_and_clean(path, ray_cluster) -> bool:
    """A leftover from the killed attempt (its ffmpeg may finish after the retry): the next run removes it."""
    run_cli([str(path), "--ray", "auto"], env={"RAY_ADDRESS": ray_cluster.address})
    return not [p for p in Path(path).parent.joinpath("kill").rglob("*") if PARTIAL in p.name]


# ------------------------------------------------------------------------------------------ Ray stays optional


def test_local_batch_never_imports_ray_and_a_missing_ray_is_explained(work, tmp_path):
    doc = jobs_doc(work, str(tmp_path / "out"))
    doc["jobs"] = [doc["jobs"][-1]]  # the missing video: fails before any model loads
    path = write_jobs(work, "noray.json", doc)
    code = ("import sys; from lipsync_core import cli; rc = cli.main(['batch', sys.argv[1]]); "
            "assert 'ray' not in sys.modules, 'the local batch imported ray'; sys.exit(rc)")
    env = dict(os.environ, PYTHONPATH=str(ROOT), **ENV)
    r = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1, r.stderr[-2000:]
    doc = jobs_doc(work, str(tmp_path / "out"))
    doc["jobs"] = [doc["jobs"][2]]  # a good job: it would go to Ray
    path = write_jobs(work, "noray2.json", doc)
    code = ("import sys; sys.modules['ray'] = None; from lipsync_core import cli; "
            "sys.exit(cli.main(['batch', sys.argv[1], '--ray', 'auto']))")
    r = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and 'pip install "ray[default]"' in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out" / "range_a.mp4").exists()


def test_cancel_stops_the_batch_and_reports_what_ran(work, tmp_path):
    doc = jobs_doc(work, str(tmp_path / "out"))
    doc["jobs"] = doc["jobs"][:2] + [doc["jobs"][4]]
    path = write_jobs(work, "cancel.json", doc)
    report = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), **ENV)
    proc = subprocess.Popen([sys.executable, "-m", "lipsync_core", "batch", str(path), "--json-progress",
                             "--report", str(report)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "job":
            proc.send_signal(signal.SIGTERM)  # during the second job
    assert proc.wait(timeout=120) == 130
    rep = report_of(report)
    first = next(e["id"] for e in events if e["event"] == "job")
    assert rep[first]["status"] == "done"
    cancelled = [j for j, r in rep.items() if r["message"] == "not run (cancelled)"]
    assert cancelled and all(rep[j]["status"] == "failed" for j in cancelled)
    assert events[-1]["event"] == "result" and events[-1]["exit"] == 130
    done = [j for j, r in rep.items() if r["status"] == "done"]
    assert set(cancelled) == set(rep) - set(done)  # the job cut short is not run, not a failure of its own
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == sorted([f"{j}.mp4" for j in done] + [f"{j}.mp4.lipsync.json" for j in done])


# ------------------------------------------------------------------------- a cut of an edit (Export Batch)


def test_cut_job_is_the_edits_own_clip(work, tmp_path):
    """A job with face_ranges / dub_ranges runs as the Blender extension's press runs a cut (sync_edit): the
    mouth redone only where a face segment and the dub meet, exact_size kept, the mixed dub as its sound; the
    record keeps what the import needs."""
    from lipsync_core import sync
    from lipsync_core.batch_export import export_batch

    m = work["dir"] / "media"
    parts = [{"file": str(m / "speech.wav"), "from": 0.2, "at": 0.0, "seconds": 0.6, "volume": 0.8},
             {"file": str(m / "tone.wav"), "from": 0.0, "at": 0.5, "seconds": 0.3, "volume": [0.5] * 8}]
    face_ranges = [{"start": 0.4, "end": 0.8, "face": True}, {"start": 0.8, "end": 1.2, "face": False}]
    job = {"id": "cut1", "video": str(m / "a.mp4"), "audio": "dub/cut1.wav", "output": "out/cut1.mp4",
           "start": 0.4, "end": 1.2, "audio_start": 0, "face_ranges": face_ranges, "dub_ranges": [[0.44, 1.2]],
           "options": {"face": "largest", "exact_size": True}}
    doc = {"version": 1, "checkpoint": str(work["ckpt"]), "options": {"box": BOX, "detector": "opencv"},
           "jobs": [job]}
    folder = tmp_path / "farm"
    bad = dict(doc, jobs=[dict(job, face_ranges=[{"start": 0.4, "end": 0.8, "face": "yes"}])])
    with pytest.raises(Exception, match='"face" in "face_ranges"'):
        export_batch(str(folder), bad, [{"output": "dub/cut1.wav", "dub": parts, "seconds": 0.8}])
    assert not folder.exists()  # refused: nothing written
    export_batch(str(folder), doc, [{"output": "dub/cut1.wav", "dub": parts, "seconds": 0.8}],
                 {"manifest.json": {"x": 1}})
    assert sorted(p.name for p in folder.rglob("*")) == ["JOBS.json", "cut1.wav", "dub", "manifest.json"]
    kept = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    lost = [dict(parts[0], file=str(m / "gone.wav"))]
    with pytest.raises(Exception, match="gone.wav"):  # a failing mix: the earlier export stays as it was
        export_batch(str(folder), doc, [{"output": "dub/cut1.wav", "dub": parts, "seconds": 0.8},
                                        {"output": "dub/cut2.wav", "dub": lost, "seconds": 0.8}])
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == kept
    r = run_cli([str(folder / "JOBS.json"), "--report", str(folder / "REPORT.json")])
    assert r.returncode == 0, r.stderr[-3000:]
    out = folder / "out" / "cut1.mp4"
    rec = provenance.read_record(out)
    assert rec["made_from"]["cut"] == {"segments": [{"start_frame": 10, "end_frame": 20, "face": True},
                                                    {"start_frame": 20, "end_frame": 30, "face": False}],
                                       "sync_ranges": [[11, 30]]}
    assert rec["clip"]["face_frames"] == 9 and rec["clip"]["segments"][0]["start_frame"] == 10

    # the same cut pressed locally: the same frames (the mouth from the same dub mix, heard at 16 kHz)
    local = tmp_path / "local.mp4"
    opts = sync.SyncOptions(box=tuple(BOX), detector="opencv", exact_size=True)
    clip = {"video": str(m / "a.mp4"), "start_frame": 10, "end_frame": 30, "output": str(local), "dub": parts,
            "segments": [{"start_frame": 10, "end_frame": 20, "face": True},
                         {"start_frame": 20, "end_frame": 30, "face": False}],
            "sync_ranges": [[11, 30]], "face_choice": "largest"}
    row = sync.sync_edit(str(work["ckpt"]), [clip], opts)["clips"][0]
    assert row["face_frames"] == rec["clip"]["face_frames"]
    got, want = frames_of(out).astype(np.float32), frames_of(local).astype(np.float32)
    source = frames_of(m / "a.mp4")[10:30].astype(np.float32)
    assert got.shape == want.shape == source.shape
    x1, y1, x2, y2 = BOX
    mouth = (slice(None), slice((y1 + y2) // 2, y2), slice(x1, x2))
    changed = np.abs(got - source)[mouth].mean(axis=(1, 2, 3))
    assert (changed[1:10] > 20).all() and (changed[[0, *range(10, 20)]] < 5).all(), changed  # frames 11-19 only
    assert np.abs(got - want)[mouth].mean() < 0.25 * np.abs(want - source)[mouth].mean()
    heard = A.load_audio(str(out))
    mix = sync.mix_dub(parts, 0.8)
    k = min(len(heard), len(mix))
    assert np.corrcoef(heard[:k], mix[:k])[0, 1] > 0.9


# ------------------------------------------- from Blender: Export Batch -> the Ray cluster -> Import Batch Results


def _batch(jobs: Path, cluster, report: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS=cluster.address, **ENV)
    return subprocess.run([sys.executable, "-m", "lipsync_core", "batch", str(jobs), "--ray", "auto", "--report",
                           str(report)], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def pressed_here(lipsync_addon, checkpoint, farm_media, tmp_path_factory):
    """The edit pressed here (the reference), its results moved aside so the import makes its own."""
    be.configure(checkpoint)
    project = tmp_path_factory.mktemp("farm_project")
    bpy.ops.wm.save_as_mainfile(filepath=str(project / "edit.blend"))
    scene = _build("Local", farm_media)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ENV.items():  # the press's engine runs as the farm's (fp32)
            mp.setenv(k, v)
        assert bpy.ops.lipsync.sync() == {"FINISHED"}
    state = _state(scene)
    shutil.move(project / "lipsync", project / "local_results")
    yield {"project": project, "state": state, "results": project / "local_results"}
    bpy.ops.wm.read_homefile(use_empty=True)  # a new, unsaved file again: later tests expect one


def test_blender_export_run_on_ray_import_equals_the_local_press(pressed_here, farm_media, checkpoint, ray_cluster,
                                                                  tmp_path):
    project = pressed_here["project"]
    scene = _build("Farm", farm_media)
    before = _state(scene)
    # the farm sees the media, the checkpoint and the export folder under other roots (symlinks play the share)
    export, farm = project / "batch", tmp_path / "farm"
    farm.mkdir()
    for name, target in (("media", farm_media), ("ckpt", Path(checkpoint).parent), ("batch", export)):
        (farm / name).symlink_to(target, target_is_directory=True)
    path_map = f"{farm_media}={farm / 'media'}; {Path(checkpoint).parent}={farm / 'ckpt'}"

    # a problem a press would show: the same list, nothing is written
    scene.sequence_editor.strips["dub2"].select = False
    with pytest.raises(RuntimeError, match=r"nothing was run:\n- 'cut2': no dub plays under it"):
        bpy.ops.lipsync.export_batch(directory=str(export), path_map=path_map)
    assert not export.exists()
    scene.sequence_editor.strips["dub2"].select = True
    assert _state(scene) == before

    assert bpy.ops.lipsync.export_batch(directory=str(export), path_map=path_map) == {"FINISHED"}
    doc = json.loads((export / "JOBS.json").read_text())
    assert len(doc["jobs"]) == 2 and doc["checkpoint"] == str(farm / "ckpt" / Path(checkpoint).name)
    assert {Path(j["video"]).parent for j in doc["jobs"]} == {farm / "media"}
    assert all(not os.path.isabs(j[k]) for j in doc["jobs"] for k in ("audio", "output"))
    assert doc["options"]["exact_size"] is True and doc["options"]["codec"] == "h264"
    by_cut = {e["cuts"][0]: e for e in json.loads((export / "lipsync_batch.json").read_text())["jobs"]}
    assert set(by_cut) == set(CUTS)

    # the farm runs it from its own path; cut2's dub is lost there: that job fails, the other is done
    wav2 = export / "dub" / f"{by_cut['cut2']['id']}.wav"
    wav2.rename(wav2.with_suffix(".kept"))
    r = _batch(farm / "batch" / "JOBS.json", ray_cluster, export / "REPORT.json")
    assert r.returncode == 1, r.stderr[-3000:]
    assert bpy.ops.lipsync.import_batch(directory=str(export)) == {"FINISHED"}
    after_first = _state(scene)
    cut1_local = pressed_here["state"]["strips"]["cut1"]
    assert after_first["strips"]["cut1"] == cut1_local
    assert after_first["strips"]["cut2"] == before["strips"]["cut2"]  # failed on the farm: unchanged
    assert not after_first["strips"]["cut2.sound"][5]  # its own sound still plays
    assert "1 of 1 cut(s)" in scene.lipsync.message and "not placed: cut2 (failed)" in scene.lipsync.message

    # the dub back, the batch again: cut1 is skipped, cut2 done
    wav2.with_suffix(".kept").rename(wav2)
    r = _batch(farm / "batch" / "JOBS.json", ray_cluster, export / "REPORT.json")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = {j["id"]: j for j in json.loads((export / "REPORT.json").read_text())["jobs"]}
    assert rep[by_cut["cut1"]["id"]]["status"] == "skipped" and rep[by_cut["cut2"]["id"]]["status"] == "done"

    # cut2's dub changed since the export: named, nothing changed
    scene.sequence_editor.strips["dub2"].volume = 0.5
    assert bpy.ops.lipsync.import_batch(directory=str(export)) == {"FINISHED"}
    assert "not placed: cut2 (changed)" in scene.lipsync.message
    assert _state(scene) == after_first
    scene.sequence_editor.strips["dub2"].volume = 1.0

    bpy.ops.ed.undo_push(message="before the import")
    assert bpy.ops.lipsync.import_batch(*AS_UI, directory=str(export)) == {"FINISHED"}
    scene = bpy.data.scenes["Farm"]
    got = _state(scene)
    want = pressed_here["state"]
    assert got["strips"] == want["strips"]  # same strips, ranges, channels, mute, files, custom properties
    assert got["markers"] == want["markers"]
    for cut in CUTS:  # the farm's result is the press's, up to the dub's resampling before the mel
        name = Path(bpy.path.abspath(scene.sequence_editor.strips[cut].filepath)).name
        farm_out, press_out = _frames(project / "lipsync" / name), _frames(pressed_here["results"] / name)
        assert farm_out.shape == press_out.shape
        source = _frames(farm_media / ("a.mp4" if cut == "cut1" else "b.mp4"))
        start = scene.sequence_editor.strips[cut]["lipsync_src_start"]
        source = source[start : start + len(farm_out)]
        assert farm_out.shape == source.shape
        made, off = _psnr(farm_out, press_out), _psnr(press_out, source)
        assert made > 30 and made > off + 3, (cut, made, off)  # much nearer the press's than the source
    # one undo: back to after the first import
    bpy.ops.ed.undo()
    assert _state(bpy.data.scenes["Farm"]) == after_first
    # redone, a press finds every result in place: it starts no engine and changes nothing
    bpy.ops.ed.redo()
    assert _state(bpy.data.scenes["Farm"]) == got
    wc = be.submodule("worker_client")
    started, run = [], wc.WorkerProcess.run
    wc.WorkerProcess.run = lambda self: (started.append(self.job), run(self))[1]
    try:
        assert bpy.ops.lipsync.sync() == {"FINISHED"}
    finally:
        wc.WorkerProcess.run = run
    assert started == [] and _state(bpy.data.scenes["Farm"]) == got
