"""`python build.py bench`: speed and memory of the engine, per stage, on made media (and shared/media).

Each configuration runs in a fresh process so its peak memory (ru_maxrss of the engine plus its ffmpeg
children) is its own. Prints one table per run and saves everything as JSON (default out/bench.json).

    python build.py bench [--quick] [--seconds 60] [--device auto|cpu|cuda] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: lipsync_core and tools/ (sample media, random weights)
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "out" / "bench"
W, H, FPS = 640, 360, 25
STAGES = ("decode", "detect", "mel", "crop", "generator", "blend", "encode", "wait")


def make_clip(path: Path, seconds: float) -> Path:
    """A 640x360 talking-head stand-in: the astronaut photo drifting gently, encoded as a stream."""
    if path.exists():
        return path
    from lipsync_core.media import ffmpeg_exe
    from tools import sample_media

    n = int(seconds * FPS)
    base = sample_media.astronaut_frames(100, W, H, motion=6.0)
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
           "-s", f"{W}x{H}", "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18",
           "-preset", "veryfast", str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for i in range(n):
        k = i % 200
        proc.stdin.write(base[k if k < 100 else 199 - k].tobytes())
    proc.stdin.close()
    proc.wait()
    return path


def make_hd(path: Path, source: Path, scale: int = 3) -> Path:
    """`source` scaled up `scale` times (640x360 -> 1920x1080): where encoding and decoding weigh more."""
    if not path.exists():
        from lipsync_core.media import ffmpeg_exe

        subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(source), "-vf",
                        f"scale={W * scale}:{H * scale}", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18",
                        "-preset", "veryfast", str(path)], check=True)
    return path


def make_speech(path: Path, seconds: float) -> Path:
    if path.exists():
        return path
    from tools import sample_media

    text = " ".join(["The quick brown fox jumps over the lazy dog while the editor replaces this line."] * 12)
    return sample_media.speech_wav(path, text=text, seconds=seconds)


class ChildMemory:
    """Peak resident memory of this process's children (the ffmpeg decoders and encoders), sampled from /proc
    every 0.2 s. (ru_maxrss of the children is no use: a child forked from a 1 GB Python counts that 1 GB
    until it execs ffmpeg.) Reads 0 where there is no /proc."""

    def __init__(self) -> None:
        import threading

        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    def _poll(self) -> None:
        me = str(os.getpid())
        while not self._stop.wait(0.2):
            total = 0
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
                except OSError:  # the process ended while we looked
                    continue
                if fields.get("PPid", "").strip() == me and "VmRSS" in fields:
                    total += int(fields["VmRSS"].split()[0])
            self.peak_mb = max(self.peak_mb, total / 1024)


def run_config(cfg: dict) -> dict:
    """In a child process: one sync run, with its timings and peak memory."""
    if cfg.get("worker"):
        return run_worker(cfg)
    if cfg.get("edit"):
        return run_edit(cfg)
    from lipsync_core.sync import SyncOptions, sync

    opts = SyncOptions(**cfg.get("options", {}))
    t0 = time.perf_counter()
    with ChildMemory() as children:
        result = sync(cfg["video"], cfg["audio"], cfg["output"], cfg["checkpoint"], opts)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"frames": result["frames"], "face_frames": result["face_frames"], "seconds": wall,
            "fps": result["frames"] / wall, "timings": result["timings"], "device": result["device"],
            "dtype": result["dtype"], "precision": result["precision"], "peak_rss_mb": rss,
            "peak_child_rss_mb": children.peak_mb}


def run_worker(cfg: dict) -> dict:
    """In a child process: the Blender add-on's path, `python -m lipsync_core.worker --job FILE`, on the whole
    clip as one face clip; peak memory is the worker process's own (ffmpeg's is smaller)."""
    from lipsync_core.media import probe

    frames = probe(cfg["video"]).frames
    job = {"command": "sync", "video": cfg["video"], "audio": cfg["audio"], "checkpoint": cfg["checkpoint"],
           "clips": [{"start_frame": 0, "end_frame": frames, "audio_start": 0.0, "output": cfg["output"],
                      "face": True}], "options": cfg.get("options", {})}
    job_file = OUT / "worker_job.json"
    job_file.write_text(json.dumps(job))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lipsync_core.worker", "--job", str(job_file)],
                          capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not events or events[-1].get("event") != "result":
        raise SystemExit(f"worker failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"frames": frames, "face_frames": frames, "seconds": wall, "fps": frames / wall, "timings": {},
            "device": "worker", "dtype": "", "peak_rss_mb": rss, "peak_child_rss_mb": 0.0}


def run_edit(cfg: dict) -> dict:
    """In a child process: the Blender extension installed in bpy, an edit of `cuts` cuts that together make the
    whole clip, the dub as `dubs` sound strips; one Lip Sync press (Whole strip segments), then a second press on
    the unchanged edit. Counts the engine processes a press starts and the time to the engine's first progress."""
    from tools import demo

    demo.prepare_user_resources(OUT / "edit")
    import bpy

    from lipsync_core.media import probe

    installed = demo.install_extension(OUT / "edit" / "dist")
    demo.configure(installed.module, sys.executable, Path(cfg["checkpoint"]))
    bpy.context.preferences.addons[installed.module].preferences.device = cfg.get("device", "auto").upper()
    worker_client = sys.modules[f"{installed.module}.worker_client"]
    frames = probe(cfg["video"]).frames
    scene = bpy.data.scenes.new("bench edit")
    bpy.context.window.scene = scene
    scene.render.fps, scene.render.fps_base = FPS, 1.0
    scene.sequence_editor_create()
    coll = scene.sequence_editor.strips
    cut = frames // cfg["cuts"]
    for k in range(cfg["cuts"]):  # cut k shows the clip's frames k*cut.. at the same place on the timeline
        for kind, channel in (("movie", 1), ("sound", 2)):
            new = coll.new_movie if kind == "movie" else coll.new_sound
            s = new(f"cut{k}" if kind == "movie" else f"cut{k}.sound", cfg["video"], 20 + channel, 1)
            s.frame_offset_start = k * cut
            s.frame_final_end = 1 + (k + 1) * cut
            s.channel = channel
    line = cfg["cuts"] * cut // cfg["dubs"]
    for j in range(cfg["dubs"]):
        s = coll.new_sound(f"dub{j}", cfg["audio"], 5, 1)
        s.frame_offset_start = j * line
        s.frame_final_end = 1 + (j + 1) * line
    scene.lipsync.segment_source = "STRIP"
    bpy.ops.wm.save_as_mainfile(filepath=str(OUT / "edit" / "bench_edit.blend"))
    starts: list[float] = []
    first: list[float] = []
    run = worker_client.WorkerProcess.run

    def counted(self):
        if self.job.get("command") != "check":
            starts.append(time.perf_counter())
            inner = self.on_event

            def on_event(ev):
                if ev.get("event") == "progress" and not first:
                    first.append(time.perf_counter())
                inner(ev)

            self.on_event = on_event
        return run(self)

    worker_client.WorkerProcess.run = counted
    t0 = time.perf_counter()
    if bpy.ops.lipsync.sync() != {"FINISHED"}:
        raise SystemExit("the bench edit's press failed")
    wall = time.perf_counter() - t0
    processes = len(starts)
    t1 = time.perf_counter()
    bpy.ops.lipsync.sync()
    again = time.perf_counter() - t1
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"frames": cfg["cuts"] * cut, "face_frames": cfg["cuts"] * cut, "seconds": wall,
            "fps": cfg["cuts"] * cut / wall, "timings": {}, "device": "blender edit", "dtype": "",
            "peak_rss_mb": rss, "peak_child_rss_mb": 0.0, "engine_processes": processes,
            "first_progress_s": (first[0] - t0) if first else None, "second_press_s": again,
            "second_press_engine_processes": len(starts) - processes}


def spawn(cfg: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), LIPSYNC_CACHE_DIR=str(OUT / "cache"), **cfg.pop("env", {}))
    if cfg.pop("fresh_cache", False):
        import shutil

        shutil.rmtree(OUT / "cache", ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "tools.bench", "--run", json.dumps(cfg)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def generator_alone(checkpoint: str, device: str, batches=(16, 32, 64), repeats: int = 3) -> list[dict]:
    """The generator by itself, in fp32 and each faster precision the device offers: whole face (first_row 0, as
    the reference) and the feather blend's band."""
    from lipsync_core.composite import Compositor
    from lipsync_core.device import FP32, faster_precisions, pick_device
    from lipsync_core.inference import FaceGenerator
    from lipsync_core.model import load_model

    dev = pick_device(device)
    model = load_model(checkpoint, device=dev)
    rows = []
    band = Compositor("feather").first_row_used()
    for precision, first_row in itertools.product([FP32, *faster_precisions(dev)], (0, band)):
        gen = FaceGenerator(model, dev, precision, first_row=first_row)
        for b in batches:
            mels = np.random.default_rng(0).standard_normal((b, 80, 16)).astype(np.float32)
            faces = np.random.default_rng(1).integers(0, 255, (b, 96, 96, 3), dtype=np.uint8)
            gen.predict(mels, faces)  # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                gen.predict(mels, faces)
            dt = (time.perf_counter() - t0) / repeats
            rows.append({"dtype": precision.name, "rows": f"{first_row}-95", "batch": b, "fps": b / dt})
    return rows


def run_reference(ref_dir: Path, ckpt: Path, clip: Path, speech: Path, box: list[int]) -> dict:
    """The reference's inference.py with --box (its order: top bottom left right), wall time incl. start-up."""
    x1, y1, x2, y2 = box
    out = OUT / "reference.mp4"
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "r = subprocess.run(sys.argv[1:]); "
            "print(r.returncode, time.perf_counter() - t, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    cmd = [sys.executable, "-c", code, sys.executable, "inference.py", "--checkpoint_path", str(ckpt),
           "--face", str(clip), "--audio", str(speech), "--box", str(y1), str(y2), str(x1), str(x2),
           "--outfile", str(out)]
    proc = subprocess.run(cmd, cwd=ref_dir, capture_output=True, text=True)
    rc, wall, rss = proc.stdout.strip().splitlines()[-1].split()
    if rc != "0":
        raise SystemExit(f"the reference failed in {ref_dir}:\n{proc.stderr[-2000:]}")
    from lipsync_core.media import probe

    frames = probe(str(out)).frames
    return {"frames": frames, "seconds": float(wall), "fps": frames / float(wall), "peak_rss_mb": float(rss)}


def print_run(name: str, r: dict) -> None:
    total = r["seconds"]
    print(f"\n{name}: {r['frames']} frames ({r['face_frames']} lip-synced) in {total:.1f} s = "
          f"{r['fps']:.1f} frames/s end to end on {r['device']} ({r['dtype']}); peak memory "
          f"{r['peak_rss_mb']:.0f} MB (+ ffmpeg {r['peak_child_rss_mb']:.0f} MB)")
    print(f"  {'stage':<10}{'seconds':>9}{'frames/s':>10}{'share':>8}")
    for st in STAGES:
        sec = r["timings"].get(st)
        if sec is None:
            continue
        fps = r["frames"] / sec if sec > 0 else float("inf")
        note = "  (main thread waiting on the generator)" if st == "wait" else ""
        print(f"  {st:<10}{sec:>9.2f}{fps:>10.1f}{100 * sec / total:>7.1f}%{note}")
    for t in (r.get("precision") or {}).get("tried", []):
        print(f"  precision {t['precision']}: {'kept' if t['kept'] else 'refused'}, {t['psnr_fast']} dB vs fp32 in "
              f"the mouth, the encoding {t['psnr_encode']} dB, largest difference {t['max_diff']:g}/255")


def bench_batch(seconds: float, device: str, json_path: str, jobs: int = 6) -> int:
    """Wall time of `batch` with and without Ray on the same jobs; Ray's cluster start is not counted (a farm's
    cluster is up). One job at a time on both sides: the Ray task asks for every CPU of the node."""
    import shutil

    from tools.random_weights import write_random_checkpoint
    from tools.ray_cluster import LocalRayCluster

    folder = OUT / "batch"
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = OUT / "random_wav2lip.pth"
    if not ckpt.exists():
        write_random_checkpoint(ckpt)
    clip = make_clip(OUT / f"clip_{seconds:g}s.mp4", seconds)
    speech = make_speech(OUT / f"speech_{seconds:g}s.wav", seconds)
    cpus = os.cpu_count() or 1
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def run(name: str, extra: list[str], run_env: dict) -> dict:
        out = folder / name
        shutil.rmtree(out, ignore_errors=True)
        doc = {"version": 1, "checkpoint": str(ckpt),
               "options": {"box": [230, 40, 410, 250], "segments": "all", "device": device},
               "jobs": [{"id": f"job{i}", "video": str(clip), "audio": str(speech), "output": f"{name}/job{i}.mp4"}
                        for i in range(jobs)]}
        path = folder / f"{name}.json"
        path.write_text(json.dumps(doc))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "lipsync_core", "batch", str(path), "--json-progress",
                               "--report", str(folder / f"{name}_report.json"), *extra], env=run_env,
                              capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"batch {name} failed:\n{proc.stderr[-3000:]}")
        frames = jobs * int(round(seconds * FPS))
        print(f"{name:<40} {wall:7.1f} s  {frames / wall:6.1f} frames/s")
        return {"seconds": wall, "fps": frames / wall}

    report = {"jobs": jobs, "clip_seconds": seconds, "cpus": cpus}
    report["local"] = run("local", [], env)
    cluster = LocalRayCluster(nodes=1, cpus=cpus, env={"PYTHONPATH": str(ROOT)})
    try:
        report["ray"] = run("ray", ["--ray", cluster.address, "--cpus-per-job", str(cpus)], env)
    finally:
        cluster.stop()
    report["ray_over_local"] = report["ray"]["seconds"] / report["local"]["seconds"]
    print(f"Ray / local wall time: {report['ray_over_local']:.3f}x")
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(report, indent=2))
    print(f"saved {json_path}")
    return 0


def bench_edit(report: dict, clip: Path, speech: Path, ckpt: Path, seconds: float, args) -> int:
    """One press on an edit of the clip vs one CLI sync of it: detection warm in both (the same cache)."""
    cli = {"video": str(clip), "audio": str(speech), "checkpoint": str(ckpt), "output": str(OUT / "out.mp4"),
           "options": {"segments": "all", "device": args.device}}
    env = dict(os.environ, PYTHONPATH=str(ROOT), LIPSYNC_CACHE_DIR=str(OUT / "cache"))
    subprocess.run([sys.executable, "-m", "lipsync_core", "segments", str(clip), "--device", args.device], cwd=ROOT,
                   env=env, capture_output=True, check=True)  # fills the detection cache both runs then read
    runs = {f"CLI sync, {seconds:g} s (detection cached)": cli,
            f"Blender press, 12 cuts / 6 dub strips, {seconds:g} s": {
                "video": str(clip), "audio": str(speech), "checkpoint": str(ckpt), "edit": True, "cuts": 12,
                "dubs": 6, "device": args.device}}
    for name, cfg in runs.items():
        r = report["runs"][name] = spawn(dict(cfg))
        print_run(name, r)
    cli_r, edit_r = report["runs"].values()
    report["edit_vs_cli"] = edit_r["seconds"] / cli_r["seconds"]
    report["load_average"] = os.getloadavg()
    print(f"\npress / CLI: {report['edit_vs_cli']:.2f}x; engine processes per press: {edit_r['engine_processes']}; "
          f"first progress after {edit_r['first_progress_s']:.1f} s; second press (unchanged): "
          f"{edit_r['second_press_s']:.1f} s, {edit_r['second_press_engine_processes']} engine processes; "
          f"load average {report['load_average'][0]:.1f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python build.py bench")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="15 s clips instead of 60 s")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--edit", action="store_true",
                    help="only the edit run: one Lip Sync press in Blender on 12 cuts (dub as 6 strips) vs one CLI "
                         "sync of the same clip")
    ap.add_argument("--json", default=str(ROOT / "out" / "bench.json"))
    ap.add_argument("--batch", action="store_true",
                    help="only the batch engine's overhead: 6 jobs on a one-node local Ray cluster against the "
                         "same jobs run here one after another (needs Ray)")
    ap.add_argument("--rows", metavar="TEXT",
                    help="only the end-to-end runs whose name contains TEXT (and the reference, if asked for)")
    ap.add_argument("--reference", metavar="DIR",
                    help="a runnable checkout of Rudrabha/Wav2Lip: time its inference.py on the same clip and box")
    args = ap.parse_args(argv)
    if args.run:
        print(json.dumps(run_config(json.loads(args.run))))
        return 0

    from tools.random_weights import write_random_checkpoint

    seconds = args.seconds or (15.0 if args.quick else 60.0)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.batch:
        return bench_batch(args.seconds or (4.0 if args.quick else 10.0), args.device, args.json)
    # Untrained checkpoints (no real weights can be had here), each a different case for the precision rule:
    # trained-like (BN statistics from real face crops and speech, output spread 0.1 and 0.15, as a trained
    # generator's), the random one the tests use (output spread over 0..1: no low precision passes), and
    # PyTorch's plain initialisation (a flat grey on which bf16 looks exact).
    from tools.random_weights import trained_like_model

    ckpt = OUT / "random_wav2lip.pth"
    if not ckpt.exists():
        write_random_checkpoint(ckpt)
    plain = OUT / "plain_init_wav2lip.pth"
    if not plain.exists():
        write_random_checkpoint(plain, plain_init=True)
    calibrated = {}
    for spread in (0.1, 0.15):
        calibrated[spread] = OUT / f"calibrated_{spread:g}_wav2lip.pth"
        if not calibrated[spread].exists():
            write_random_checkpoint(calibrated[spread], model=trained_like_model(0, spread))
    short_s = seconds / 4
    clip = make_clip(OUT / f"clip_{int(seconds)}s.mp4", seconds)
    short = make_clip(OUT / f"clip_{int(short_s)}s.mp4", short_s)
    speech = make_speech(OUT / f"speech_{int(seconds)}s.wav", seconds)
    short_speech = make_speech(OUT / f"speech_{int(short_s)}s.wav", short_s)
    hd = make_hd(OUT / f"clip_{int(short_s)}s_1080p.mp4", short)
    box = [230, 40, 410, 250]  # the made face, for the fixed-box runs
    hd_box = [v * 3 for v in box]
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": platform.python_version()},
              "clip": {"width": W, "height": H, "fps": FPS, "seconds": seconds}, "runs": {}}
    import torch

    report["machine"]["torch"] = torch.__version__
    report["machine"]["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    fixed = {"box": box, "segments": "all", "device": args.device}
    if args.edit:
        return bench_edit(report, clip, speech, ckpt, seconds, args)
    main_run = f"fixed box, {seconds:g} s"
    short_run = f"fixed box, {short_s:g} s (memory check)"
    cal = f"fixed box, {seconds:g} s, calibrated weights"
    cal_hd = f"fixed box, 1920x1080, {short_s:g} s, calibrated weights"
    fp32 = {"LIPSYNC_PRECISION": "fp32"}
    hd_run = {"video": str(hd), "audio": str(short_speech), "options": dict(fixed, box=hd_box)}
    runs = {
        f"{cal} (spread 0.1)": {"video": str(clip), "checkpoint": str(calibrated[0.1]), "options": fixed},
        f"{cal} (spread 0.15)": {"video": str(clip), "checkpoint": str(calibrated[0.15]), "options": fixed},
        f"{cal}, fp32 forced": {"video": str(clip), "checkpoint": str(calibrated[0.1]), "options": fixed,
                                "env": fp32},
        f"{cal_hd} (spread 0.1)": dict(hd_run, checkpoint=str(calibrated[0.1])),
        f"{cal_hd}, fp32 forced": dict(hd_run, checkpoint=str(calibrated[0.1]), env=fp32),
        f"{main_run}, test weights (no low precision passes: fp32)": {"video": str(clip), "options": fixed},
        short_run: {"video": str(short), "options": fixed},
        f"fixed box, {seconds:g} s, plain-init weights (bf16 passes the check)": {
            "video": str(clip), "checkpoint": str(plain), "options": fixed},
        f"fixed box, {seconds:g} s, whole face generated (--blend box, the reference's work)": {
            "video": str(clip), "options": dict(fixed, blend="box")},
        f"detection (auto segments), {seconds:g} s": {"video": str(clip), "fresh_cache": True, "options": {
            "detector": "opencv", "cache": True, "device": args.device}},
        f"detection cached, {seconds:g} s": {"video": str(clip), "options": {
            "detector": "opencv", "cache": True, "device": args.device}},
        f"fixed box, 1920x1080, {short_s:g} s, test weights": hd_run,
        f"Blender worker, {seconds:g} s": {"video": str(clip), "worker": True, "options": fixed},
        f"Blender worker, {short_s:g} s": {"video": str(short), "worker": True, "options": fixed},
    }
    # Real footage where the project has it (5 s clips: start-up weighs heavily), detection on every run.
    shared = ROOT.parent / "shared" / "media"
    for real in sorted(shared.glob("*.mp4")) if shared.is_dir() else []:
        runs[f"{real.name}, auto segments (opencv, uncached)"] = {
            "video": str(real), "fresh_cache": True, "options": {"detector": "opencv", "device": args.device}}
    if args.rows:
        runs = {name: cfg for name, cfg in runs.items() if args.rows in name}
    for name, cfg in runs.items():
        cfg.setdefault("checkpoint", str(ckpt))
        cfg.setdefault("audio", str(speech))
        cfg["output"] = str(OUT / "out.mp4")
        r = spawn(cfg)
        report["runs"][name] = r
        print_run(name, r)
    done = report["runs"]
    if main_run + ", test weights (no low precision passes: fp32)" in done and short_run in done:
        main = done[main_run + ", test weights (no low precision passes: fp32)"]
        report["memory_growth"] = main["peak_rss_mb"] / done[short_run]["peak_rss_mb"]
        print(f"\npeak memory {seconds:g} s vs {short_s:g} s clip: engine {report['memory_growth']:.2f}x")
    long_worker, short_worker = f"Blender worker, {seconds:g} s", f"Blender worker, {short_s:g} s"
    if long_worker in done and short_worker in done:
        report["worker_memory_growth"] = done[long_worker]["peak_rss_mb"] / done[short_worker]["peak_rss_mb"]
        print(f"Blender worker peak memory {seconds:g} s vs {short_s:g} s: {report['worker_memory_growth']:.2f}x")
    det = done.get(f"detection (auto segments), {seconds:g} s")
    if det:
        report["detect_share"] = share = det["timings"].get("detect", 0) / det["seconds"]
        print(f"detection share of end-to-end time: {100 * share:.1f}%")

    if args.reference:
        # The reference runs fp32 whatever the weights; its speed does not depend on them.
        report["reference"] = ref = run_reference(Path(args.reference), ckpt, clip, speech, box)
        print(f"\nreference inference.py, fixed box: {ref['frames']} frames in {ref['seconds']:.1f} s = "
              f"{ref['fps']:.1f} frames/s, peak memory {ref['peak_rss_mb']:.0f} MB")
        report["reference_1080p"] = ref_hd = run_reference(Path(args.reference), ckpt, hd, short_speech, hd_box)
        print(f"reference inference.py, 1920x1080, fixed box: {ref_hd['fps']:.1f} frames/s, peak memory "
              f"{ref_hd['peak_rss_mb']:.0f} MB")
        report["speedup_vs_reference"] = {}
        for name, r in done.items():
            if name.startswith("fixed box") and "memory" not in name:
                base = ref_hd if "1920x1080" in name else ref
                report["speedup_vs_reference"][name] = r["fps"] / base["fps"]
                print(f"  {name}: {r['fps']:.1f} frames/s ({r['dtype']}) = {r['fps'] / base['fps']:.2f}x")

    if not args.rows:
        rows = generator_alone(str(calibrated[0.1]), args.device)
        report["generator_alone"] = rows
        print("\ngenerator alone, calibrated weights (frames/s):")
        for row in rows:
            print(f"  {row['dtype']:<13} rows {row['rows']:<6} batch {row['batch']:>3}: {row['fps']:.1f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\nsaved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
