"""Streaming video decode and encode through ffmpeg pipes.

`probe` describes a video (exact frame count), `FrameReader` streams BGR uint8 frames out of ffmpeg
(frame-exact start, optional downscale in the decoder), `VideoEncoder` streams frames into ffmpeg
(H.264 yuv420p + AAC, exact frame count, audio cut/padded to the video's length).
Nothing here holds a whole video in memory. ffprobe is optional: without it the same facts come from
`ffmpeg -i` and a quick decode pass.
"""

from __future__ import annotations

import functools
import json
import math
import os
import queue
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from . import tools
from .errors import LipsyncError

# Containers whose index makes `-ss` before `-i` land reliably; others (MPEG-TS, ...) are decoded from the
# start and the leading frames dropped, which is exact but slower.
_SEEKABLE_FORMATS = ("mov", "mp4", "matroska", "webm")
_AUDIO_RATE = 48000  # every output's audio rate: the editing standard, and any input rate resamples to it
# yuv <-> bgr24 with these flags round-trips losslessly in luma (swscale's default drifts ~1.7 levels darker
# per generation, visible where the unchanged frame meets the pasted mouth) and costs no more.
_SWS_FLAGS = "bilinear+accurate_rnd+full_chroma_int"
# ffprobe colour matrix names -> swscale's, so an encode converts with the matrix its source decoded with
_SWS_MATRIX = {"bt709": "bt709", "smpte170m": "smpte170m", "bt470bg": "bt470", "bt2020nc": "bt2020",
               "bt2020c": "bt2020", "smpte240m": "smpte240m", "fcc": "fcc"}


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int  # as decoded, i.e. after rotation metadata is applied
    height: int
    fps: float
    fps_rational: str  # "30000/1001"
    frames: int  # exact number of decodable frames
    duration: float  # seconds of video
    has_audio: bool
    # seconds from the file's start to the first video frame: what `-ss` positions are measured against
    start_time: float = 0.0
    # False for variable frame rate or containers without a reliable index: readers decode from the start
    seekable: bool = True
    rotation: int = 0
    color_space: str | None = None  # the source's YUV matrix tag ("bt709", ...); pass it to VideoEncoder


@dataclass(frozen=True)
class AudioInfo:
    duration: float
    sample_rate: int
    channels: int


# ----------------------------------------------------------------------------------------------- helpers


def _tail(stderr: bytes | str, n: int = 6) -> str:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return "\n  ".join(lines[-n:]) or "(no message)"


def _check_input(path) -> str:
    p = Path(path)
    if not p.exists():
        raise LipsyncError(f"file not found: {p}. Check the path.")
    if p.is_dir():
        raise LipsyncError(f"{p} is a folder: give a media file.")
    return str(p)


@functools.cache
def _passthrough_args(ff: str) -> tuple[str, ...]:
    """Keep every decoded frame exactly once. `-fps_mode` (ffmpeg >= 5.1) replaced `-vsync` (gone in 7+)."""
    try:
        help_text = subprocess.run([ff, "-hide_banner", "-h", "long"], capture_output=True, text=True,
                                   check=False).stdout
    except OSError:
        help_text = ""
    if "-fps_mode" in help_text or "-vsync" not in help_text:
        return ("-fps_mode", "passthrough")
    return ("-vsync", "passthrough")


def _ff_base() -> list[str]:
    return [tools.ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]


def _fraction(text) -> Fraction | None:
    try:
        f = Fraction(str(text))
    except (ValueError, ZeroDivisionError):
        return None
    return f if f > 0 else None


def _float(v, default: float | None = None) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f if math.isfinite(f) else default


def _snap_fps(value: float) -> Fraction:
    """`ffmpeg -i` prints rounded rates ("29.97"): recover the usual exact fractions."""
    for base in (24, 30, 48, 60, 120, 240):
        ntsc = Fraction(base * 1000, 1001)
        if abs(value - float(ntsc)) < 0.006:
            return ntsc
    if abs(value - round(value)) < 0.006:
        return Fraction(round(value))
    return Fraction(value).limit_denominator(1001)


def _rotation_of(value) -> int:
    r = _float(value, 0.0) or 0.0
    return int(round(r)) % 360


# --------------------------------------------------------------------------------------- metadata reading


@dataclass
class _Meta:
    format_name: str = ""
    format_start: float = 0.0
    format_duration: float | None = None
    video: dict | None = None  # width, height, rotation, rate, avg_rate, nb_frames, duration, start
    audio: list | None = None  # [{sample_rate, channels, duration}]


def _meta_ffprobe(path: str, ffprobe: str) -> _Meta:
    proc = subprocess.run([ffprobe, "-v", "error", "-show_format", "-show_streams", "-of", "json", path],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise LipsyncError(f"cannot read {path}: {_tail(proc.stderr)}\n"
                           "Give a video or audio file that ffmpeg can open.")
    data = json.loads(proc.stdout.decode("utf-8", "replace") or "{}")
    fmt = data.get("format", {})
    meta = _Meta(format_name=fmt.get("format_name", ""), format_start=_float(fmt.get("start_time"), 0.0),
                 format_duration=_float(fmt.get("duration")), audio=[])
    for s in data.get("streams", []):
        kind = s.get("codec_type")
        if kind == "video" and meta.video is None and not s.get("disposition", {}).get("attached_pic"):
            rot = s.get("tags", {}).get("rotate", 0)
            for sd in s.get("side_data_list", []) or []:
                if "rotation" in sd:
                    rot = sd["rotation"]
            nb = s.get("nb_frames")
            meta.video = {
                "width": int(s.get("width") or 0), "height": int(s.get("height") or 0),
                "rotation": _rotation_of(rot),
                "color_space": s.get("color_space"),
                "rate": _fraction(s.get("r_frame_rate")), "avg_rate": _fraction(s.get("avg_frame_rate")),
                "nb_frames": int(nb) if str(nb).isdigit() else None,
                "duration": _float(s.get("duration")),
                "start": _float(s.get("start_time")),
            }
        elif kind == "audio":
            meta.audio.append({"sample_rate": int(s.get("sample_rate") or 0),
                               "channels": int(s.get("channels") or 0),
                               "duration": _float(s.get("duration"))})
    return meta


_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "downmix": 2, "quad": 4, "hexagonal": 6, "octagonal": 8}


def _layout_channels(layout: str) -> int:
    layout = layout.strip()
    m = re.match(r"(\d+) channels", layout)
    if m:
        return int(m.group(1))
    m = re.match(r"(\d+)\.(\d+)", layout)  # "5.1(side)" -> 6
    if m:
        return int(m.group(1)) + int(m.group(2))
    return _LAYOUT_CHANNELS.get(layout.split("(")[0], 2)


def _meta_ffmpeg(path: str) -> _Meta:
    """Parse `ffmpeg -i` (for users with imageio-ffmpeg's binary, which has no ffprobe)."""
    proc = subprocess.run([tools.ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path], capture_output=True,
                          check=False)
    text = proc.stderr.decode("utf-8", "replace")
    m = re.search(r"^Input #0, (.*), from ", text, re.MULTILINE)
    if not m:
        raise LipsyncError(f"cannot read {path}: {_tail(text)}\n"
                           "Give a video or audio file that ffmpeg can open.")
    meta = _Meta(format_name=m.group(1), audio=[])
    m = re.search(r"Duration: (?:(\d+):(\d+):(\d+(?:\.\d+)?)|N/A)(?:, start: (-?[\d.]+))?", text)
    if m:
        if m.group(1) is not None:
            meta.format_duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
        meta.format_start = _float(m.group(4), 0.0)
    # Split into stream blocks so side data (rotation) stays with its stream.
    blocks = re.split(r"^\s*Stream #0:", text, flags=re.MULTILINE)[1:]
    for block in blocks:
        head = block.splitlines()[0]
        m = re.search(r": (Video|Audio): (.*)$", head)
        if not m:
            continue
        kind, desc = m.groups()
        if kind == "Video" and meta.video is None and "(attached pic)" not in desc:
            size = re.search(r"[ ,](\d{2,5})x(\d{2,5})(?=[ ,\[]|$)", desc)
            fps = re.search(r"([\d.]+)(k?) fps", desc)
            tbr = re.search(r"([\d.]+)(k?) tbr", desc)
            rot = re.search(r"rotation of (-?[\d.]+) degrees", block)
            # "yuv420p(tv, bt709, progressive)"; "bt709/bt709/bt709" when primaries/transfer are printed too
            color = None
            pix = re.search(r"\w+\(([^)]*)\)", desc.split(",", 1)[1] if "," in desc else "")
            for token in (pix.group(1).split(",") if pix else []):
                token = token.strip().split("/")[0]
                if token in _SWS_MATRIX:
                    color = token
            rate = _snap_fps(float(fps.group(1)) * (1000 if fps.group(2) else 1)) if fps else None
            r_rate = _snap_fps(float(tbr.group(1)) * (1000 if tbr.group(2) else 1)) if tbr else rate
            meta.video = {
                "width": int(size.group(1)) if size else 0, "height": int(size.group(2)) if size else 0,
                "rotation": _rotation_of(rot.group(1)) if rot else 0, "color_space": color,
                "rate": r_rate, "avg_rate": rate, "nb_frames": None, "duration": None, "start": None,
            }
        elif kind == "Audio":
            hz = re.search(r"(\d+) Hz, ([^,]+)", desc)
            meta.audio.append({"sample_rate": int(hz.group(1)) if hz else 0,
                               "channels": _layout_channels(hz.group(2)) if hz else 0,
                               "duration": None})
    return meta


def _read_meta(path: str) -> _Meta:
    ffprobe = tools.ffprobe_exe()
    return _meta_ffprobe(path, ffprobe) if ffprobe else _meta_ffmpeg(path)


def _decode_scan(path: str) -> tuple[int, float | None, bool]:
    """Decode the video stream once (no pixel conversion): exact frame count, the first frame's time
    (relative to the file start, as `-ss` counts) and whether frame spacing is regular.

    The timestamps come from framecrc lines of `wrapped_avframe` packets: cheap, nothing is copied.
    """
    cmd = [*_ff_base(), "-i", path, "-map", "0:V:0", "-an", "-sn", "-dn",
           *_passthrough_args(tools.ffmpeg_exe()), "-enc_time_base", "1:1000000",
           "-c:v", "wrapped_avframe", "-f", "framecrc", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise LipsyncError(f"cannot decode the video in {path}:\n  {_tail(proc.stderr)}")
    pts = []
    for line in proc.stdout.decode("ascii", "replace").splitlines():
        if line and line[0] != "#":
            parts = line.split(",")
            if len(parts) >= 3:
                pts.append(int(parts[2]))
    if not pts:
        return 0, None, True
    pts.sort()
    regular = True
    if len(pts) > 2:
        d = np.diff(np.asarray(pts, np.int64))
        med = float(np.median(d))
        regular = med > 0 and float(np.abs(d - med).max()) < 0.25 * med
    return len(pts), pts[0] / 1e6, regular


# ------------------------------------------------------------------------------------------------- probe


def probe(path) -> VideoInfo:
    """Describe a video file; LipsyncError if it is missing, unreadable or has no video stream."""
    path = _check_input(path)
    meta = _read_meta(path)
    v = meta.video
    if v is None or v["width"] <= 0:
        raise LipsyncError(f"{path} has no video stream: give a video file.")
    width, height = v["width"], v["height"]
    if v["rotation"] in (90, 270):  # ffmpeg rotates while decoding
        width, height = height, width
    rate, avg = v["rate"], v["avg_rate"]
    # r_frame_rate is the clean nominal rate ("30000/1001"); avg is what variable-rate files really average.
    if rate and avg and abs(float(rate) - float(avg)) <= 1e-3 * float(avg):
        fps, constant = rate, True
    else:
        fps, constant = avg or rate, False
    if fps is None:
        raise LipsyncError(f"cannot tell the frame rate of {path}: re-encode it to a constant frame rate, "
                           "e.g. ffmpeg -i IN -r 25 OUT.mp4")

    frames, start, duration = None, None, v["duration"]
    nb = v["nb_frames"]
    # The container's sample count is exact unless an edit list trims frames (stream-copy cuts): then the
    # trimmed duration no longer matches it and we count by decoding instead.
    if nb and duration and abs(nb - duration * float(fps)) < 0.5 and constant:
        frames = nb
        if v["start"] is not None:
            start = v["start"] - meta.format_start
    if frames is None:
        frames, start_scan, regular = _decode_scan(path)
        start = start_scan if v["start"] is None else v["start"] - meta.format_start
        constant = constant and regular
    if frames <= 0:
        raise LipsyncError(f"{path} has a video stream but no frame could be decoded: "
                           "the file may be damaged; re-export it.")
    if duration is None:
        duration = frames / float(fps)
    seekable = constant and any(f in meta.format_name.split(",") for f in _SEEKABLE_FORMATS)
    return VideoInfo(path=path, width=width, height=height, fps=float(fps),
                     fps_rational=f"{fps.numerator}/{fps.denominator}", frames=int(frames),
                     duration=float(duration), has_audio=bool(meta.audio), start_time=float(start or 0.0),
                     seekable=seekable, rotation=v["rotation"],
                     color_space=v["color_space"] if v["color_space"] in _SWS_MATRIX else None)


def probe_audio(path) -> AudioInfo:
    """Describe the first audio stream of a file; LipsyncError if missing or it has no audio.

    Without ffprobe the duration comes from `ffmpeg -i`, rounded to 10 ms.
    """
    path = _check_input(path)
    meta = _read_meta(path)
    if not meta.audio:
        raise LipsyncError(f"{path} has no audio stream: give an audio file (wav, mp3, ...) "
                           "or a video with sound.")
    a = meta.audio[0]
    duration = a["duration"] if a["duration"] is not None else meta.format_duration
    if duration is None:
        raise LipsyncError(f"cannot tell how long the audio in {path} is: convert it to WAV first.")
    return AudioInfo(duration=float(duration), sample_rate=a["sample_rate"], channels=a["channels"])


# ------------------------------------------------------------------------------------------------ reader


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def _start_ffmpeg(cmd: list[str], stdin, stdout):
    """A streaming ffmpeg with its stderr in a temporary file (read back for the error message), unbuffered
    pipes; LipsyncError if the binary cannot start."""
    stderr = tempfile.TemporaryFile()
    try:
        return subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr, bufsize=0), stderr
    except OSError as exc:
        stderr.close()
        raise LipsyncError(f"could not start ffmpeg ({cmd[0]}): {exc}") from exc


def _grow_pipe(fd: int, size: int) -> None:
    """Bigger pipe = fewer context switches per frame (Linux only; silently skipped elsewhere)."""
    try:
        import fcntl

        fcntl.fcntl(fd, 1031, size)  # F_SETPIPE_SZ
    except (ImportError, OSError, ValueError):
        pass


def _read_exact(stdout, shape: tuple[int, int, int]) -> np.ndarray | None:
    """One frame from a raw pipe into a fresh array; None at the end of the stream."""
    buf = np.empty(shape, np.uint8)
    view = memoryview(buf).cast("B")
    got, n = 0, view.nbytes
    while got < n:
        k = stdout.readinto(view[got:])
        if not k:
            return None
        got += k
    return buf


class _Decoder:
    """The ffmpeg process and prefetch thread; holds no reference to its FrameReader, so a reader that is
    dropped without close() is still collected and its ffmpeg killed."""

    def __init__(self, cmd: list[str], shape: tuple[int, int, int], n: int, path: str, prefetch: int):
        self.shape, self.n, self.path = shape, n, path
        self.proc, self.stderr = _start_ffmpeg(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        _grow_pipe(self.proc.stdout.fileno(), 1 << 20)
        self.stop = threading.Event()
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self.thread = None
        if prefetch > 0:
            self.thread = threading.Thread(target=self._pump, name="FrameReader", daemon=True)
            self.thread.start()

    def read(self) -> np.ndarray | None:
        """Next frame, None at the end; LipsyncError if ffmpeg failed."""
        if self.thread is None:
            return self._read()
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def _read(self) -> np.ndarray | None:
        frame = _read_exact(self.proc.stdout, self.shape)
        if frame is None:
            # ffmpeg ended early: an error, or the file held fewer frames than probed (then just stop)
            rc = self.proc.wait()
            if rc != 0 and not self.stop.is_set():
                self.stderr.seek(0)
                tail = _tail(self.stderr.read())
                raise LipsyncError(f"ffmpeg failed while decoding {self.path}:\n  {tail}")
        return frame

    def _pump(self) -> None:
        try:
            for _ in range(self.n):
                frame = self._read()
                if frame is None or self.stop.is_set():
                    break
                self._put(frame)
        except BaseException as exc:  # hand any failure to the consumer
            self._put(exc)
            return
        self._put(None)

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self.stop.set()
        if self.proc.poll() is None:
            self.proc.kill()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()


class FrameReader:
    """Iterate BGR uint8 frames (H, W, 3) of `path[start_frame:end_frame]` streamed from ffmpeg.

    Frame k of the reader is frame start_frame + k of a full decode (end_frame exclusive, clamped to the
    video). `size=(w, h)` scales in ffmpeg (cheap small frames for face detection). A prefetch thread keeps
    `prefetch` frames decoded ahead of the consumer (0: read inline). Every frame is a fresh array the
    caller may keep or modify. Use as a context manager (or call close()) to stop ffmpeg when leaving early.
    If the file ends before end_frame (a damaged tail), iteration just stops: check `frames_read`.
    """

    def __init__(self, path, start_frame: int = 0, end_frame: int | None = None,
                 size: tuple[int, int] | None = None, info: VideoInfo | None = None, prefetch: int = 4):
        self.info = info or probe(path)
        self.path = str(path)
        total = self.info.frames
        end = total if end_frame is None else min(int(end_frame), total)
        start = int(start_frame)
        if start < 0 or start > end:
            raise LipsyncError(f"frame range {start}..{end_frame} is outside the video "
                               f"(frames 0..{total}): choose a range inside it.")
        self.start_frame, self.end_frame = start, end
        w, h = size if size else (self.info.width, self.info.height)
        self.width, self.height = int(w), int(h)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"bad frame size {size}")
        self.frames_read = 0
        self._dec: _Decoder | None = None
        if len(self) > 0:
            self._dec = _Decoder(self._command(), self.shape, len(self), self.path, prefetch)

    def __len__(self) -> int:
        return self.end_frame - self.start_frame

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 3)

    def _command(self) -> list[str]:
        cmd = _ff_base()
        filters = []
        if self.start_frame > 0 and self.info.seekable:
            # Midway between frames k-1 and k: immune to timestamp rounding. Input -ss decodes from the
            # keyframe before and drops frames earlier than t, so the first frame out is exactly k.
            t = self.info.start_time + (self.start_frame - 0.5) / self.info.fps
            cmd += ["-ss", f"{max(t, 0.0):.6f}"]
        elif self.start_frame > 0:
            filters.append(f"trim=start_frame={self.start_frame}")
        cmd += ["-i", self.path, "-map", "0:V:0", "-an", "-sn", "-dn"]
        if (self.width, self.height) != (self.info.width, self.info.height):
            filters.append(f"scale={self.width}:{self.height}:flags=bilinear")
        if filters:
            filters.append("format=bgr24")  # scale and convert in one swscale pass
            cmd += ["-vf", ",".join(filters)]
        cmd += [*_passthrough_args(cmd[0]), "-frames:v", str(len(self)), "-sws_flags", _SWS_FLAGS,
                "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"]
        return cmd

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self._dec is None or self.frames_read >= len(self):
            raise StopIteration
        try:
            frame = self._dec.read()
        except BaseException:
            self.close()
            raise
        if frame is None:
            self.close()
            raise StopIteration
        self.frames_read += 1
        if self.frames_read >= len(self):
            self.close()  # ffmpeg stops by itself after -frames:v; nothing more to wait for
        return frame

    def read_batches(self, batch: int) -> Iterator[np.ndarray]:
        """Yield (n, H, W, 3) arrays of up to `batch` frames."""
        buf: list[np.ndarray] = []
        for frame in self:
            buf.append(frame)
            if len(buf) == batch:
                yield np.stack(buf)
                buf = []
        if buf:
            yield np.stack(buf)

    def close(self) -> None:
        dec, self._dec = self._dec, None
        if dec is not None:
            dec.close()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------------------------- encoder

_MUXERS = {".mov": "mov", ".mkv": "matroska", ".m4v": "mp4"}


class VideoEncoder:
    """Stream BGR uint8 frames into an H.264 (yuv420p, +faststart) + AAC file.

    The output holds exactly the frames written, at `fps_rational`, and always an audio track: `audio_path`
    from `audio_start` seconds (negative: leading silence; past its end: silence), cut or padded with silence
    to exactly frames/fps seconds; without `audio_path` a silent track, so every clip has the same streams
    and editors treat them alike. Audio is 48 kHz AAC, mono or stereo like the source.

    ffmpeg writes to a hidden `.NAME.partial.EXT` beside `out_path`, renamed on a successful close();
    abort() or an exception inside `with` removes it and leaves `out_path` untouched. Odd sizes (which
    yuv420p cannot hold) are padded by one edge-replicated row/column: see `out_width`/`out_height`.

    `color_space`: the source's `VideoInfo.color_space`, so the YUV matrix round-trips (None: BT.601,
    untagged, which matches how untagged sources decode).

    Frames are queued to a writer thread, not copied: do not modify an array after passing it to write().
    Give `n_frames` when known: audio is then encoded in the same pass; otherwise (or if a different number
    of frames arrives) a quick second pass muxes it, copying the video.
    """

    def __init__(self, out_path, width: int, height: int, fps_rational: str, audio_path=None,
                 audio_start: float = 0.0, n_frames: int | None = None, crf: int = 18,
                 preset: str = "superfast", color_space: str | None = None, queue_frames: int = 8):
        self.out_path = Path(out_path)
        folder = self.out_path.parent
        if not folder.is_dir():
            raise LipsyncError(f"output folder {folder} does not exist: create it or choose another -o path.")
        if self.out_path.is_dir():
            raise LipsyncError(f"output {self.out_path} is a folder: give a file name such as clip.mp4.")
        if not os.access(folder, os.W_OK):
            raise LipsyncError(f"cannot write to {folder}: choose another -o path.")
        self.fps = _fraction(fps_rational)
        if self.fps is None:
            raise ValueError(f"bad frame rate {fps_rational!r}")
        self.width, self.height = int(width), int(height)
        self.out_width, self.out_height = self.width + self.width % 2, self.height + self.height % 2
        self.audio_path = str(audio_path) if audio_path is not None else None
        self.audio_start = float(audio_start)
        self._audio_info = probe_audio(self.audio_path) if self.audio_path else None
        self.n_frames = n_frames
        self.crf, self.preset = crf, preset
        self.frames_written = 0
        suffix = self.out_path.suffix or ".mp4"
        self._muxer = _MUXERS.get(suffix.lower(), "mp4")
        self._tmp = folder / f".{self.out_path.stem}.partial{suffix}"
        self._tmp_video = folder / f".{self.out_path.stem}.partial-video{suffix}"
        self._done = False
        # one pass with audio when the length is known; otherwise video first, audio muxed at close()
        self._one_pass = n_frames is not None and n_frames > 0
        target = self._tmp if self._one_pass else self._tmp_video
        cmd = [*_ff_base(), "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
               "-video_size", f"{self.width}x{self.height}",
               "-framerate", f"{self.fps.numerator}/{self.fps.denominator}", "-i", "pipe:0"]
        if self._one_pass:
            a_in, a_filter, a_out = self._audio_args(n_frames)
            cmd += [*a_in, "-map", "0:v:0", "-map", "1:a:0", "-af", a_filter, *a_out]
        else:
            cmd += ["-map", "0:v:0", "-an"]
        cmd += ["-vf", ",".join(self._video_filters(color_space)), *self._color_tags(color_space),
                "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
                *_passthrough_args(cmd[0]), *self._mux_args(final=self._one_pass), str(target)]
        self._proc, self._stderr = _start_ffmpeg(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        _grow_pipe(self._proc.stdin.fileno(), 1 << 20)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_frames))
        self._thread = threading.Thread(target=self._pump, args=(self._proc.stdin, self._queue),
                                        name="VideoEncoder", daemon=True)
        self._thread.start()

    # -- video

    def _video_filters(self, color_space: str | None) -> list[str]:
        chain = []
        if (self.out_width, self.out_height) != (self.width, self.height):
            dw, dh = self.out_width - self.width, self.out_height - self.height
            chain += [f"pad={self.out_width}:{self.out_height}:0:0",
                      f"fillborders=right={dw}:bottom={dh}:mode=smear"]
        matrix = _SWS_MATRIX.get(color_space or "")
        chain.append(f"scale=flags={_SWS_FLAGS}" + (f":out_color_matrix={matrix}" if matrix else ""))
        chain.append("format=yuv420p")
        return chain

    @staticmethod
    def _color_tags(color_space: str | None) -> list[str]:
        """Tag the matrix we converted with (untagged sources stay untagged: both ways used BT.601)."""
        if color_space not in _SWS_MATRIX:
            return []
        tags = ["-colorspace", color_space]
        if color_space == "bt709":
            tags += ["-color_primaries", "bt709", "-color_trc", "bt709"]
        return tags

    # -- audio

    def _audio_args(self, n_frames: int) -> tuple[list[str], str, list[str]]:
        """Input args, filter and output args for exactly n_frames/fps seconds of audio."""
        n_samples = round(n_frames * _AUDIO_RATE / self.fps)
        info = self._audio_info
        start = self.audio_start
        if info is None or start >= info.duration:
            channels = min(max(info.channels, 1), 2) if info else 2
            layout = "mono" if channels == 1 else "stereo"
            a_in = ["-f", "lavfi", "-i", f"anullsrc=r={_AUDIO_RATE}:cl={layout}"]
            chain = []
        else:
            channels = min(max(info.channels, 1), 2)
            a_in = (["-ss", f"{start:.6f}"] if start > 0 else []) + ["-i", self.audio_path]
            chain = [f"aresample={_AUDIO_RATE}"]
            if start < 0:
                chain.append(f"adelay=delays={round(-start * _AUDIO_RATE)}S:all=1")
        chain += [f"apad=whole_len={n_samples}", f"atrim=end_sample={n_samples}"]
        a_out = ["-c:a", "aac", "-b:a", "192k" if channels == 2 else "128k", "-ac", str(channels),
                 "-ar", str(_AUDIO_RATE)]
        return a_in, ",".join(chain), a_out

    def _mux_args(self, final: bool) -> list[str]:
        args = ["-f", self._muxer]
        if final and self._muxer in ("mp4", "mov"):
            args += ["-movflags", "+faststart"]
        return args

    # -- frames

    @staticmethod
    def _pump(stdin, q: queue.Queue) -> None:
        """Writer thread: feed queued frames to ffmpeg; after a broken pipe, drain until the end marker."""
        broken = False
        while True:
            item = q.get()
            if item is None:
                break
            if broken:
                continue
            try:
                view = memoryview(item).cast("B")
                while view:  # a raw pipe write may be partial
                    view = view[stdin.write(view):]
            except (BrokenPipeError, OSError, ValueError):
                broken = True
        try:
            stdin.close()
        except OSError:
            pass

    def write(self, frame: np.ndarray) -> None:
        """Queue one (height, width, 3) uint8 BGR frame."""
        if self._done:
            raise RuntimeError("encoder is closed")
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame must be ({self.height}, {self.width}, 3) uint8, "
                             f"got {frame.shape} {frame.dtype}")
        self._check_alive()
        self._queue.put(np.ascontiguousarray(frame))
        self.frames_written += 1

    def write_many(self, frames: np.ndarray) -> None:
        """Queue an (n, height, width, 3) uint8 array (one pipe write)."""
        if self._done:
            raise RuntimeError("encoder is closed")
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (n, {self.height}, {self.width}, 3) uint8, "
                             f"got {frames.shape} {frames.dtype}")
        if len(frames) == 0:
            return
        self._check_alive()
        self._queue.put(np.ascontiguousarray(frames))
        self.frames_written += len(frames)

    def _check_alive(self) -> None:
        if self._proc.poll() is not None:  # died mid-stream: report why now, not at close()
            msg = self._ffmpeg_error()
            self.abort()
            raise LipsyncError(msg)

    def _ffmpeg_error(self) -> str:
        self._stderr.seek(0)
        return f"ffmpeg failed while writing {self.out_path}:\n  {_tail(self._stderr.read())}"

    # -- finish

    def close(self) -> Path:
        """Finish the file and move it to out_path; LipsyncError (and no file) if ffmpeg failed."""
        if self._done:
            return self.out_path
        self._queue.put(None)
        self._thread.join()
        rc = self._proc.wait()
        if rc != 0:
            msg = self._ffmpeg_error()
            self.abort()
            raise LipsyncError(msg)
        if self.frames_written == 0:
            self.abort()
            raise LipsyncError(f"nothing to write to {self.out_path}: the clip has no frames "
                               "(check its start and end frames).")
        try:
            if not (self._one_pass and self.frames_written == self.n_frames):
                self._mux_audio()
            os.replace(self._tmp, self.out_path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._cleanup()
        return self.out_path

    def _mux_audio(self) -> None:
        """Second pass: copy the video and add audio of the right length."""
        video = self._tmp if self._one_pass else self._tmp_video
        if self._one_pass:  # wrong length in the first pass: keep its video only
            os.replace(self._tmp, self._tmp_video)
            video = self._tmp_video
        a_in, a_filter, a_out = self._audio_args(self.frames_written)
        tools.run_ffmpeg(["-y", "-i", str(video), *a_in, "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                          "-af", a_filter, *a_out, *self._mux_args(final=True), str(self._tmp)],
                         f"adding audio to {self.out_path}")

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial output; out_path is left as it was."""
        if self._done:
            return
        self._done = True
        if self._proc.poll() is None:
            self._proc.kill()
        # unblock the writer thread (it drains after the broken pipe), then reap it
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join(timeout=5)
        self._proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        for p in (self._tmp, self._tmp_video):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                pass
        self._stderr.close()

    def __enter__(self) -> VideoEncoder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):
        # forgotten without close(): never leave ffmpeg waiting on its pipe or a partial file behind
        try:
            if not self._done:
                self.abort()
        except Exception:
            pass
