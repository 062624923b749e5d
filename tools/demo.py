"""`python build.py demo`: a lip-synced edit made in Blender from nothing, into out/.

    python build.py demo [--out DIR] [--checkpoint PATH] [--no-download] [--untrained] [--quick]

Each step is timed and printed:
  1. material   out/demo_clip.mp4: scikit-image's astronaut photo with gentle camera motion, a no-face cutaway
                (the rocket photo) in the middle, and its own sound (another spoken line); out/demo_line.wav, the
                new dialogue (espeak-ng, else assets/demo_line.opus)
  2. weights    checkpoints/wav2lip_gan.pth or wav2lip.pth checked by structure; else a quick download try; else
                an UNTRAINED random-weight generator in out/: said loudly here and written on the video
  3. extension  the extension zip built and installed into out/blender_user (BLENDER_USER_RESOURCES), its
                preferences set (Python = this venv's, Checkpoint) as an editor would
  4. timeline   a 25 fps scene (view transform Standard): movie + its own sound + the new line, saved as
                out/demo.blend
  5. detect     the extension's Detect Segments (face / no face markers)
  6. sync       the extension's Lip Sync (results on a channel above, the movie's sound muted under the line)
  7. render     Blender renders the edit to out/demo.mp4 (H.264 + AAC)

--quick makes a ~4 s 320x180 edit (tests); --untrained skips looking for real weights.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: lipsync_core and tools/ (sample media, random weights)
    sys.path.insert(0, str(ROOT))

FPS = 25
LINE = ("Welcome to lip sync for Blender. This line was recorded again, and now her lips follow the new words.")
QUICK_LINE = "Hello editors. Her lips follow the new words."
ORIGINAL_LINE = "This is the original take from the set. Every word of it is about to be replaced."
LINE_VOICE = "en-us+f3"
ORIGINAL_VOICE = "en-gb+m3"
LEAD_S = 0.5  # the new line starts this far into the clip (the movie's own sound plays until then)
NOTICE = "untrained weights: lips are not synced"
GENERATORS = ("wav2lip_gan", "wav2lip")
DOWNLOAD_TIMEOUT_S = 5.0  # seconds without a byte before a mirror counts as failed


# --------------------------------------------------------------------------------------------- console


class Steps:
    """Prints each step as it starts and a table of how long each took."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.times: list[tuple[str, float, str]] = []
        self.t0 = time.monotonic()

    def run(self, name: str, what: str, fn, *args, **kwargs):
        print(f"\n[{len(self.times) + 1}/{self.total}] {name}: {what}", flush=True)
        t = time.monotonic()
        result = fn(*args, **kwargs)
        dt = time.monotonic() - t
        note = getattr(result, "note", "") if result is not None else ""
        self.times.append((name, dt, note))
        print(f"    {name} took {dt:.1f} s", flush=True)
        return result

    def table(self) -> str:
        rows = [f"    {name:<10} {dt:7.1f} s  {note}".rstrip() for name, dt, note in self.times]
        rows.append(f"    {'total':<10} {time.monotonic() - self.t0:7.1f} s")
        return "\n".join(rows)


def untrained_banner(reason: str) -> str:
    bar = "!" * 100
    lines = [
        f"UNTRAINED WEIGHTS: LIPS ARE NOT SYNCED ({reason})",
        "This demo runs the whole pipeline with a random-weight Wav2Lip generator: the mouth region is",
        "regenerated, but it does NOT follow the words. The rendered video says so on screen.",
        "For real lip sync, get the weights (python -m lipsync_core weights download wav2lip_gan, or copy",
        "wav2lip_gan.pth / wav2lip.pth into checkpoints/; see checkpoints/README.md) and run the demo again.",
    ]
    return "\n".join([bar, *(f"!!  {ln}" for ln in lines), bar])


# --------------------------------------------------------------------------------------------- 1. material


@dataclasses.dataclass
class Material:
    clip: Path  # face / no face / face, with its own sound
    line: Path  # the new dialogue
    width: int
    height: int
    fps: int
    frames: int
    face1: int  # frames of the first face part, then `noface` cutaway frames, then the rest
    noface: int
    line_seconds: float
    line_source: str  # "espeak-ng" or the asset's path

    @property
    def note(self) -> str:
        return (f"{self.frames} frames {self.width}x{self.height} @ {self.fps} fps, line "
                f"{self.line_seconds:.1f} s from {self.line_source}")


def _ffmpeg() -> str:
    from lipsync_core.media import ffmpeg_exe

    return ffmpeg_exe()


def _run_ffmpeg(*args: str) -> None:
    subprocess.run([_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True,
                   stdin=subprocess.DEVNULL)


def espeak() -> str | None:
    return shutil.which("espeak-ng") or shutil.which("espeak")


def _seconds(path: Path) -> float:
    from lipsync_core.media import probe_audio

    return float(probe_audio(path).duration)


def make_line(path: Path, text: str) -> tuple[Path, str]:
    """The new dialogue as a WAV: espeak-ng when installed, else the spoken line the project keeps."""
    exe = espeak()
    if exe:
        raw = path.with_suffix(".espeak.wav")
        subprocess.run([exe, "-v", LINE_VOICE, "-s", "150", "-w", str(raw), text], check=True, capture_output=True)
        _run_ffmpeg("-i", str(raw), "-ac", "1", "-ar", "24000", str(path))
        raw.unlink(missing_ok=True)
        return path, "espeak-ng"
    asset = ROOT / "assets" / "demo_line.opus"
    _run_ffmpeg("-i", str(asset), "-ac", "1", "-ar", "24000", str(path))
    return path, str(asset.relative_to(ROOT))


def make_own_sound(path: Path, seconds: float) -> Path:
    """The clip's own sound: another line in another voice (a soft tone without espeak-ng)."""
    exe = espeak()
    if exe:
        raw = path.with_suffix(".espeak.wav")
        subprocess.run([exe, "-v", ORIGINAL_VOICE, "-s", "160", "-w", str(raw), ORIGINAL_LINE], check=True,
                       capture_output=True)
        _run_ffmpeg("-i", str(raw), "-af", f"apad=whole_dur={seconds}", "-t", f"{seconds}", "-ac", "1", "-ar",
                    "24000", str(path))
        raw.unlink(missing_ok=True)
    else:
        _run_ffmpeg("-f", "lavfi", "-i", f"sine=frequency=220:sample_rate=24000:duration={seconds}", "-af",
                    "volume=0.2", str(path))
    return path


def face_frames(n: int, w: int, h: int):
    """n BGR frames of the astronaut photo, framed like an interview shot, with a slow push-in and drift."""
    import cv2
    import numpy as np
    from skimage import data

    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        t = i / max(1, n - 1)
        zoom = 1.0 + 0.06 * t  # push in
        cw = 480.0 / zoom  # crop width in the 512 px photo; the face is near x 150-290, y 40-200
        ch = cw * h / w
        cx = 235 + 6 * np.sin(2 * np.pi * i / 90.0)
        cy = 140 - 10 * t + 3 * np.cos(2 * np.pi * i / 70.0)
        x0, y0 = cx - cw / 2, cy - ch / 2
        m = np.array([[w / cw, 0, -x0 * w / cw], [0, h / ch, -y0 * h / ch]], np.float32)
        out[i] = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out


def cutaway_frames(n: int, w: int, h: int):
    """n BGR frames with no face: a slow pan across scikit-image's rocket photo."""
    import cv2
    import numpy as np
    from skimage import data

    img = cv2.cvtColor(data.rocket(), cv2.COLOR_RGB2BGR)  # 427 x 640
    ih, iw = img.shape[:2]
    out = np.empty((n, h, w, 3), np.uint8)
    ch = ih * 0.8
    cw = ch * w / h
    for i in range(n):
        t = i / max(1, n - 1)
        x0 = (iw - cw) * (0.15 + 0.5 * t)
        y0 = (ih - ch) * 0.5
        m = np.array([[w / cw, 0, -x0 * w / cw], [0, h / ch, -y0 * h / ch]], np.float32)
        out[i] = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out


def make_material(out: Path, quick: bool = False) -> Material:
    import numpy as np

    from tools import sample_media

    out.mkdir(parents=True, exist_ok=True)
    w, h = (320, 180) if quick else (640, 360)
    line, source = make_line(out / "demo_line.wav", QUICK_LINE if quick else LINE)
    line_s = _seconds(line)
    frames = round((LEAD_S + line_s + 0.5) * FPS)
    noface = round((0.8 if quick else 1.4) * FPS)
    face1 = round((frames - noface) * 0.5)
    face2 = frames - noface - face1
    own = make_own_sound(out / "demo_own_sound.wav", frames / FPS + 0.5)
    faces = face_frames(face1 + face2, w, h)  # one continuous shot, interrupted by the cutaway
    images = np.concatenate([faces[:face1], cutaway_frames(noface, w, h), faces[face1:]])
    clip = sample_media.write_video(out / "demo_clip.mp4", images, fps=str(FPS), audio=own)
    own.unlink(missing_ok=True)  # it lives on in the clip
    return Material(clip, line, w, h, FPS, frames, face1, noface, line_s, source)


# --------------------------------------------------------------------------------------------- 2. weights


@dataclasses.dataclass
class Weights:
    path: Path
    trained: bool
    how: str  # where it came from, or why it is untrained

    @property
    def note(self) -> str:
        return f"{self.path.name}: {self.how}" if self.trained else f"UNTRAINED ({self.how})"


def structure_problems(path: Path) -> list[str]:
    """Why `path` is not a Wav2Lip generator checkpoint (empty: it is one). Reads tensors only, never code."""
    from lipsync_core import weights

    return weights.check_structure(path, "wav2lip")


def checkpoint_dirs() -> list[Path]:
    from lipsync_core import weights

    return list(dict.fromkeys([weights.default_dir(), ROOT / "checkpoints"]))


def download_weights(name: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> tuple[Path | None, str]:
    """`python -m lipsync_core weights download NAME` with a short stall timeout; (path or None, what happened)."""
    from lipsync_core import weights

    entry = weights.get(name)
    part = dest / (entry.filename + ".part")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "lipsync_core", "weights", "download", name, "--dest", str(dest),
           "--timeout", str(timeout)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    stop = threading.Event()

    def progress() -> None:  # the CLI's own bar is hidden when its output is not a terminal
        shown = 0
        while not stop.wait(2.0):
            size = part.stat().st_size if part.exists() else 0
            if size > shown:
                shown = size
                total = f" of {entry.size / 1e6:.0f} MB" if entry.size else ""
                print(f"    downloading {entry.filename}: {size / 1e6:.0f} MB{total}", flush=True)

    watcher = threading.Thread(target=progress, daemon=True)
    watcher.start()
    try:
        output, _ = proc.communicate()
    except BaseException:
        proc.kill()
        raise
    finally:
        stop.set()
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    if proc.returncode == 0 and (dest / entry.filename).is_file():
        return dest / entry.filename, "downloaded and verified"
    failures = [ln for ln in lines if ln.startswith("http")]
    why = failures[0] if failures else (lines[0] if lines else f"exit code {proc.returncode}")
    return None, f"{len(failures) or 'all'} mirror(s) failed, e.g. {why}"


def find_checkpoint(out: Path, explicit: Path | None = None, try_download: bool = True,
                    untrained: bool = False, download=download_weights) -> Weights:
    """A real generator checkpoint if there is one (checked by structure), else an untrained one, said loudly."""
    if explicit is not None:
        problems = structure_problems(explicit)
        if problems:
            raise SystemExit(f"error: {explicit} is not a Wav2Lip generator checkpoint: {problems[0]}")
        print(f"    using {explicit} (given with --checkpoint)")
        return Weights(explicit, True, "given with --checkpoint")
    reasons: list[str] = []
    if not untrained:
        for folder in checkpoint_dirs():
            for name in GENERATORS:
                path = folder / f"{name}.pth"
                if not path.is_file():
                    continue
                problems = structure_problems(path)
                if not problems:
                    print(f"    using {path} (its tensors are a Wav2Lip generator's)")
                    return Weights(path, True, f"found in {folder}")
                print(f"    skipping {path}: {problems[0]}")
        reasons.append("no wav2lip_gan.pth / wav2lip.pth in checkpoints/")
        if try_download:
            dest = checkpoint_dirs()[0]
            print(f"    trying to download wav2lip_gan into {dest} (stall timeout {DOWNLOAD_TIMEOUT_S:.0f} s)...",
                  flush=True)
            path, what = download("wav2lip_gan", dest)
            if path is not None:
                print(f"    {what}: {path}")
                return Weights(path, True, what)
            print(f"    download failed: {what}")
            reasons.append("none could be downloaded")
    else:
        reasons.append("--untrained")
    reason = ", ".join(reasons)
    path = out / "untrained_wav2lip.pth"
    if path.is_file() and not structure_problems(path):
        print(f"    reusing the random-weight generator {path}")
    else:
        from tools.random_weights import write_random_checkpoint

        write_random_checkpoint(path)
        print(f"    wrote a random-weight generator to {path}")
    print(untrained_banner(reason), flush=True)
    return Weights(path, False, reason)


# --------------------------------------------------------------------------------------------- 3. extension


@dataclasses.dataclass
class Installed:
    module: str
    zip: Path
    note: str = ""


def user_resources(out: Path) -> Path:
    return out / "blender_user"


def prepare_user_resources(out: Path) -> Path:
    """A fresh Blender user folder under out/, pointed at before bpy is imported."""
    user = user_resources(out)
    if "bpy" in sys.modules and os.environ.get("BLENDER_USER_RESOURCES") != str(user):
        raise RuntimeError("bpy was imported before the demo set BLENDER_USER_RESOURCES; run the demo in a fresh "
                           "process (python build.py demo)")
    if user.exists():
        shutil.rmtree(user)
    user.mkdir(parents=True)
    os.environ["BLENDER_USER_RESOURCES"] = str(user)
    return user


def install_extension(dist: Path) -> Installed:
    """Build the zip as `python build.py extension` does and install + enable it as Blender does."""
    import bpy

    from tools.build_extension import build

    zip_path = build(dist)
    module = "bl_ext.user_default.lipsync"
    if module not in bpy.context.preferences.addons:
        res = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default",
                                                       enable_on_install=True)
        if res != {"FINISHED"} or module not in bpy.context.preferences.addons:
            raise RuntimeError(f"installing {zip_path} failed: {res}")
    return Installed(module, zip_path, f"{zip_path.name} into {os.environ.get('BLENDER_USER_RESOURCES', '?')}")


def configure(module: str, python: str, checkpoint: Path) -> None:
    """Preferences > Add-ons > Lip Sync, as an editor sets them."""
    import bpy

    bpy.context.preferences.filepaths.save_version = 0  # no demo.blend1 backups
    p = bpy.context.preferences.addons[module].preferences
    p.python_path = python
    p.checkpoint_path = str(checkpoint)
    p.device = "AUTO"


# --------------------------------------------------------------------------------------------- 4. timeline


@dataclasses.dataclass
class Timeline:
    scene: str
    blend: Path
    movie: str
    own_sound: str
    line: str
    notice: str | None  # the untrained-weights text strip
    note: str = ""


def _strips(se):
    return se.strips if hasattr(se, "strips") else se.sequences


def add_text(scene, text: str, channel: int, start: int, end: int, height: int):
    """A caption strip along the bottom (4.2's new_effect takes frame_end, 4.4+ length)."""
    coll = _strips(scene.sequence_editor)
    try:
        strip = coll.new_effect("untrained notice", "TEXT", channel, start, length=end - start)
    except TypeError:
        strip = coll.new_effect("untrained notice", "TEXT", channel, start, frame_end=end)
    strip.text = text
    strip.font_size = max(8, height // 20)
    strip.color = (1.0, 0.85, 0.1, 1.0)
    strip.use_box = True
    strip.box_color = (0.0, 0.0, 0.0, 0.75)
    strip.location = (0.5, 0.05)
    for attr, value in (("alignment_x", "CENTER"), ("anchor_x", "CENTER"), ("anchor_y", "BOTTOM"),
                        ("align_x", "CENTER"), ("align_y", "BOTTOM")):
        if hasattr(strip, attr):
            setattr(strip, attr, value)
    return strip


def build_timeline(material: Material, weights: Weights, blend: Path, name: str = "Demo",
                   only_scene: bool = False) -> Timeline:
    """The editor's starting point: movie + its own sound + the new line; saved. The untrained notice strip
    goes on top when the weights are untrained. only_scene: remove the other (startup) scenes first."""
    import bpy

    scene = bpy.data.scenes.new(name)
    bpy.context.window.scene = scene
    if only_scene:
        for old in [s for s in bpy.data.scenes if s != scene]:
            bpy.data.scenes.remove(old)
    r = scene.render
    r.fps, r.fps_base = material.fps, 1.0
    r.resolution_x, r.resolution_y, r.resolution_percentage = material.width, material.height, 100
    scene.view_settings.view_transform = "Standard"  # as Blender's Video Editing template: footage colours
    se = scene.sequence_editor_create()
    coll = _strips(se)
    movie = coll.new_movie("interview", str(material.clip), 1, 1, fit_method="ORIGINAL")
    own = coll.new_sound("interview.sound", str(material.clip), 2, 1)
    line_at = 1 + round(LEAD_S * material.fps)
    line = coll.new_sound("new line", str(material.line), 3, line_at)
    line.frame_final_end = min(line.frame_final_end, movie.frame_final_end)
    se.active_strip = movie
    scene.frame_start, scene.frame_end = 1, movie.frame_final_end - 1
    notice = None
    if not weights.trained:
        notice = add_text(scene, NOTICE, 7, 1, movie.frame_final_end, material.height).name
    blend.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.file.make_paths_relative()  # out/ can move as a whole
    bpy.ops.wm.save_mainfile()
    return Timeline(scene.name, blend, movie.name, own.name, line.name, notice,
                    f"{len(coll)} strips, saved {blend.name}")


# --------------------------------------------------------------------------------------------- 5-6. lip sync


@dataclasses.dataclass
class Result:
    detail: str
    markers: list[tuple[int, str]]
    results: list[tuple[str, int, int, int]]  # name, channel, start, end

    @property
    def note(self) -> str:
        return self.detail


def detect(scene_name: str) -> Result:
    import bpy

    scene = bpy.data.scenes[scene_name]
    res = bpy.ops.lipsync.detect_segments()
    if res != {"FINISHED"}:
        raise RuntimeError(f"Detect Segments: {res} ({scene.lipsync.message})")
    markers = sorted((m.frame, m.name) for m in scene.timeline_markers)
    print(f"    {scene.lipsync.message}")
    print("    markers: " + ", ".join(f"{name} @ {frame}" for frame, name in markers))
    faces = sum(1 for _, n in markers if n == "LS face")
    return Result(f"{faces} face segment(s), {len(markers)} markers", markers, [])


def sync(scene_name: str, blend: Path) -> Result:
    import bpy

    scene = bpy.data.scenes[scene_name]
    scene.lipsync.segment_source = "MARKERS"  # the markers Detect Segments placed
    res = bpy.ops.lipsync.sync()
    if res != {"FINISHED"}:
        raise RuntimeError(f"Lip Sync: {res} ({scene.lipsync.message})")
    scene = bpy.data.scenes[scene_name]
    results = sorted(((s.name, s.channel, s.frame_final_start, s.frame_final_end)
                      for s in _strips(scene.sequence_editor) if s.get("lipsync_key")),
                     key=lambda row: row[2])
    print(f"    {scene.lipsync.message}")
    for name, ch, s, e in results:
        print(f"    {name}: shows its lip-synced result, channel {ch}, frames {s}-{e}")
    muted = [s.name for s in _strips(scene.sequence_editor) if s.mute]
    if muted:
        print(f"    muted under the new line: {', '.join(muted)}")
    bpy.ops.wm.save_mainfile(filepath=str(blend))
    return Result(f"{len(results)} strip(s) show their lip-synced result", [], results)


# --------------------------------------------------------------------------------------------- 7. render


@dataclasses.dataclass
class Rendered:
    path: Path
    info: dict

    @property
    def note(self) -> str:
        i = self.info
        return (f"{i.get('frames')} frames {i.get('width')}x{i.get('height')}, {i.get('video')} + {i.get('audio')}, "
                f"{i.get('seconds', 0):.1f} s")


def media_info(path: Path) -> dict:
    """Frames, size, length and codec names, from the engine's own probe (with or without ffprobe)."""
    from lipsync_core.media import probe, probe_audio

    v = probe(path)
    return {"width": v.width, "height": v.height, "frames": v.frames, "seconds": v.duration,
            "video": v.codec, "audio": probe_audio(path).codec if v.has_audio else None}


@contextlib.contextmanager
def _output_to(path: Path):
    """Send what C code writes to stdout into `path` for a while (Python's own prints included)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(path, "wb") as fh:
            os.dup2(fh.fileno(), 1)
            try:
                yield
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def render(scene_name: str, target: Path) -> Rendered:
    """The scene's whole range to an H.264 + AAC .mp4 with Blender's own renderer."""
    import bpy

    scene = bpy.data.scenes[scene_name]
    r = scene.render
    if hasattr(r.image_settings, "media_type"):
        r.image_settings.media_type = "VIDEO"  # 5.0: before file_format
    r.image_settings.file_format = "FFMPEG"
    r.ffmpeg.format, r.ffmpeg.codec = "MPEG4", "H264"
    r.ffmpeg.constant_rate_factor = "HIGH"
    r.ffmpeg.audio_codec, r.ffmpeg.audio_channels, r.ffmpeg.audio_mixrate = "AAC", "STEREO", 48000
    r.ffmpeg.audio_bitrate = 160
    tmp = target.parent / ".render"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    r.filepath = str(tmp / "demo_")
    log = target.with_suffix(".render.log")
    with bpy.context.temp_override(scene=scene), _output_to(log):  # Blender logs every frame it appends
        res = bpy.ops.render.render(animation=True, scene=scene.name)
    found = sorted(tmp.glob("demo_*"))
    if res != {"FINISHED"} or len(found) != 1:
        raise RuntimeError(f"render failed: {res}, {found}")
    os.replace(found[0], target)
    shutil.rmtree(tmp, ignore_errors=True)
    info = media_info(target)
    if info["video"] != "h264" or info["audio"] != "aac":
        raise RuntimeError(f"{target} is not H.264 + AAC: {info}")
    return Rendered(target, info)


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python build.py demo", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "out", help="where everything goes (default: out/)")
    ap.add_argument("--checkpoint", type=Path, help="use this Wav2Lip generator checkpoint")
    ap.add_argument("--no-download", action="store_true", help="do not try to download weights")
    ap.add_argument("--untrained", action="store_true", help="use random weights even if real ones are there")
    ap.add_argument("--quick", action="store_true", help="a ~4 s 320x180 edit (for tests)")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(7)
    print(f"Lip Sync demo into {out}")

    material = steps.run("material", "face clip with a no-face cutaway, its own sound, and the new line",
                         make_material, out, args.quick)
    weights = steps.run("weights", "a Wav2Lip generator checkpoint", find_checkpoint, out,
                        args.checkpoint.resolve() if args.checkpoint else None, not args.no_download,
                        args.untrained)

    prepare_user_resources(out)  # before bpy is imported
    shutil.rmtree(out / "lipsync", ignore_errors=True)  # the previous run's results (//lipsync beside the .blend)
    installed = steps.run("extension", "build the extension, install it into out/blender_user, set preferences",
                          _install_and_configure, out, weights)
    del installed
    blend = out / "demo.blend"
    timeline = steps.run("timeline", "movie + its own sound + the new line, saved as demo.blend",
                         build_timeline, material, weights, blend, only_scene=True)
    steps.run("detect", "the extension's Detect Segments", detect, timeline.scene)
    steps.run("sync", "the extension's Lip Sync", sync, timeline.scene, blend)
    rendered = steps.run("render", "Blender renders the edit", render, timeline.scene, out / "demo.mp4")

    print("\nDone. Step times:")
    print(steps.table())
    print(f"\nThe edit:   {blend}\nThe video:  {rendered.path}  ({rendered.note})")
    if not weights.trained:
        print(untrained_banner(weights.how))
    else:
        print(f"Weights:    {weights.path} ({weights.how}). Wav2Lip weights are for non-commercial use only.")
    return 0


def _install_and_configure(out: Path, weights: Weights) -> Installed:
    installed = install_extension(user_resources(out) / "dist")
    configure(installed.module, sys.executable, weights.path)
    return installed


if __name__ == "__main__":
    sys.exit(main())
