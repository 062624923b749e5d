"""`python build.py bench`: speed and memory of the engine, per stage, on made media (and shared/media).

Each configuration runs in a fresh process so its peak memory (ru_maxrss of the engine plus its ffmpeg
children) is its own. Prints one table per run and saves everything as JSON (default out/bench.json).

    python build.py bench [--quick] [--seconds 60] [--device auto|cpu|cuda] [--json PATH]
"""

from __future__ import annotations

import argparse
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
OUT = ROOT / "out" / "bench"
W, H, FPS = 640, 360, 25
STAGES = ("decode", "detect", "mel", "crop", "generator", "blend", "encode", "wait")


def make_clip(path: Path, seconds: float) -> Path:
    """A 640x360 talking-head stand-in: the astronaut photo drifting gently, encoded as a stream."""
    if path.exists():
        return path
    import media
    from lipsync_core.tools import ffmpeg_exe

    n = int(seconds * FPS)
    base = media.astronaut_frames(100, W, H, motion=6.0)
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


def make_speech(path: Path, seconds: float) -> Path:
    if path.exists():
        return path
    import media

    text = " ".join(["The quick brown fox jumps over the lazy dog while the editor replaces this line."] * 12)
    return media.speech_wav(path, text=text, seconds=seconds)


def run_config(cfg: dict) -> dict:
    """In a child process: one sync run, with its timings and peak memory."""
    from lipsync_core.sync import SyncOptions, sync

    opts = SyncOptions(**cfg.get("options", {}))
    t0 = time.perf_counter()
    result = sync(cfg["video"], cfg["audio"], cfg["output"], cfg["checkpoint"], opts)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"frames": result["frames"], "face_frames": result["face_frames"], "seconds": wall,
            "fps": result["frames"] / wall, "timings": result["timings"], "device": result["device"],
            "dtype": result["dtype"], "peak_rss_mb": rss, "peak_child_rss_mb": child}


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
    import torch

    from lipsync_core.device import pick_device, pick_dtype
    from lipsync_core.inference import FaceGenerator
    from lipsync_core.model import load_model

    dev = pick_device(device)
    model = load_model(checkpoint, device=dev)
    rows = []
    for dtype in dict.fromkeys([torch.float32, pick_dtype(dev)]):
        gen = FaceGenerator(model, dev, dtype)
        for b in batches:
            mels = np.random.default_rng(0).standard_normal((b, 80, 16)).astype(np.float32)
            faces = np.random.default_rng(1).integers(0, 255, (b, 96, 96, 3), dtype=np.uint8)
            gen.predict(mels, faces)  # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                gen.predict(mels, faces)
            dt = (time.perf_counter() - t0) / repeats
            rows.append({"dtype": str(dtype).replace("torch.", ""), "batch": b, "fps": b / dt})
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
    from lipsync_core.video import probe

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python build.py bench")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="15 s clips instead of 60 s")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=str(ROOT / "out" / "bench.json"))
    ap.add_argument("--reference", metavar="DIR",
                    help="a runnable checkout of Rudrabha/Wav2Lip: time its inference.py on the same clip and box")
    args = ap.parse_args(argv)
    if args.run:
        print(json.dumps(run_config(json.loads(args.run))))
        return 0

    from ckpt import write_random_checkpoint

    seconds = args.seconds or (15.0 if args.quick else 60.0)
    OUT.mkdir(parents=True, exist_ok=True)
    ckpt = OUT / "random_wav2lip.pth"
    if not ckpt.exists():
        write_random_checkpoint(ckpt)
    short_s = seconds / 4
    clip = make_clip(OUT / f"clip_{int(seconds)}s.mp4", seconds)
    short = make_clip(OUT / f"clip_{int(short_s)}s.mp4", short_s)
    speech = make_speech(OUT / f"speech_{int(seconds)}s.wav", seconds)
    box = [230, 40, 410, 250]  # the made face, for the fixed-box runs
    base = {"checkpoint": str(ckpt), "audio": str(speech)}
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": platform.python_version()},
              "clip": {"width": W, "height": H, "fps": FPS, "seconds": seconds}, "runs": {}}
    import torch

    report["machine"]["torch"] = torch.__version__
    report["machine"]["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    runs = {
        f"fixed box, {seconds:g} s": {"video": str(clip), "options": {"box": box, "segments": "all",
                                                                       "device": args.device}},
        f"fixed box, {short_s:g} s (memory check)": {"video": str(short), "options": {
            "box": box, "segments": "all", "device": args.device}},
        f"fixed box, {seconds:g} s, bf16 forced (LIPSYNC_PRECISION=bf16)": {
            "video": str(clip), "env": {"LIPSYNC_PRECISION": "bf16"},
            "options": {"box": box, "segments": "all", "device": args.device}},
        f"detection (auto segments), {seconds:g} s": {"video": str(clip), "fresh_cache": True, "options": {
            "detector": "opencv", "cache": True, "device": args.device}},
        f"detection cached, {seconds:g} s": {"video": str(clip), "options": {
            "detector": "opencv", "cache": True, "device": args.device}},
    }
    for name, cfg in runs.items():
        cfg.update(base, output=str(OUT / "out.mp4"))
        r = spawn(cfg)
        report["runs"][name] = r
        print_run(name, r)
    long_r = report["runs"][f"fixed box, {seconds:g} s"]
    short_r = report["runs"][f"fixed box, {short_s:g} s (memory check)"]
    report["memory_growth"] = long_r["peak_rss_mb"] / short_r["peak_rss_mb"]
    print(f"\npeak memory {seconds:g} s vs {short_s:g} s clip: {report['memory_growth']:.2f}x")
    det = report["runs"][f"detection (auto segments), {seconds:g} s"]
    share = det["timings"].get("detect", 0) / det["seconds"]
    report["detect_share"] = share
    print(f"detection share of end-to-end time: {100 * share:.1f}%")

    if args.reference:
        report["reference"] = run_reference(Path(args.reference), ckpt, clip, speech, box)
        ours = report["runs"][f"fixed box, {seconds:g} s"]
        ref = report["reference"]
        report["speedup_vs_reference"] = ours["fps"] / ref["fps"]
        print(f"\nreference inference.py, fixed box: {ref['frames']} frames in {ref['seconds']:.1f} s = "
              f"{ref['fps']:.1f} frames/s, peak memory {ref['peak_rss_mb']:.0f} MB; ours {ours['fps']:.1f} frames/s "
              f"= {report['speedup_vs_reference']:.2f}x")

    rows = generator_alone(str(ckpt), args.device)
    report["generator_alone"] = rows
    print("\ngenerator alone (frames/s):")
    for row in rows:
        print(f"  {row['dtype']:<9} batch {row['batch']:>3}: {row['fps']:.1f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\nsaved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
