"""What a media file holds: `probe(path) -> VideoInfo` (exact frame count), `probe_audio(path) -> AudioInfo`.

Facts come from ffprobe's JSON; without ffprobe (imageio-ffmpeg's binary ships none) from `ffmpeg -i`'s text and
a quick decode pass. Both parsers fill the same `_Meta`, so everything after reading is shared.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import LipsyncError
from . import ffmpeg as ff
from .ffmpeg import SWS_MATRIX, tail

# Containers whose index makes `-ss` before `-i` land reliably; others (MPEG-TS, ...) are decoded from the
# start and the leading frames dropped, which is exact but slower.
_SEEKABLE_FORMATS = ("mov", "mp4", "matroska", "webm")


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
    codec: str | None = None  # the video stream's codec as ffmpeg names it ("h264", ...)
    pix_fmt: str | None = None  # as decoded ("yuv420p", "yuv422p10le", ...)
    color_range: str | None = None  # "tv" (limited) or "pc" (full); None: untagged, read as limited

    @property
    def bit_depth(self) -> int:
        """Bits per sample of the decoded picture (8 when unknown)."""
        return pix_fmt_depth(self.pix_fmt)


def pix_fmt_depth(pix_fmt: str | None) -> int:
    """Bits per sample of an ffmpeg pixel format name: yuv422p10le -> 10, p010le -> 10, rgb48le -> 16, else 8."""
    name = (pix_fmt or "").lower()
    m = re.search(r"p(\d{1,2})(le|be)$", name) or re.match(r"(?:p0|p2|p4|y2|gray|xv|y)(\d{2})(le|be)?$", name)
    if m:
        return int(m.group(1))
    m = re.match(r"(?:rgb|bgr)(48|64)|(?:rgba|bgra)64", name)
    return 16 if m else 8


@dataclass(frozen=True)
class AudioInfo:
    duration: float
    sample_rate: int
    channels: int
    codec: str | None = None  # as ffmpeg names it ("aac", "pcm_s16le", ...)


def _check_input(path) -> str:
    p = Path(path)
    if not p.exists():
        raise LipsyncError(f"file not found: {p}. Check the path.")
    if p.is_dir():
        raise LipsyncError(f"{p} is a folder: give a media file.")
    return str(p)


def fraction(text) -> Fraction | None:
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
        raise LipsyncError(f"cannot read {path}: {tail(proc.stderr)}\n"
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
                "codec": s.get("codec_name"),
                "width": int(s.get("width") or 0), "height": int(s.get("height") or 0),
                "rotation": _rotation_of(rot),
                "color_space": s.get("color_space"),
                "pix_fmt": s.get("pix_fmt"), "color_range": s.get("color_range"),
                "rate": fraction(s.get("r_frame_rate")), "avg_rate": fraction(s.get("avg_frame_rate")),
                "nb_frames": int(nb) if str(nb).isdigit() else None,
                "duration": _float(s.get("duration")),
                "start": _float(s.get("start_time")),
            }
        elif kind == "audio":
            meta.audio.append({"codec": s.get("codec_name"), "sample_rate": int(s.get("sample_rate") or 0),
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


def _codec_of(desc: str) -> str | None:
    """`ffmpeg -i` stream text "h264 (High) (avc1 / 0x31637661), yuv420p(...)" -> "h264"."""
    m = re.match(r"\s*([\w-]+)", desc)
    return m.group(1) if m else None


def _meta_ffmpeg(path: str) -> _Meta:
    """Parse `ffmpeg -i` (for users with imageio-ffmpeg's binary, which has no ffprobe)."""
    proc = subprocess.run([ff.ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path], capture_output=True,
                          check=False)
    text = proc.stderr.decode("utf-8", "replace")
    m = re.search(r"^Input #0, (.*), from ", text, re.MULTILINE)
    if not m:
        raise LipsyncError(f"cannot read {path}: {tail(text)}\n"
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
            color = color_range = None
            pix_fmt = re.match(r"\s*(\w+)", desc.split(",", 1)[1]) if "," in desc else None
            pix = re.search(r"\w+\(([^)]*)\)", desc.split(",", 1)[1] if "," in desc else "")
            for token in (pix.group(1).split(",") if pix else []):
                token = token.strip().split("/")[0]
                if token in SWS_MATRIX:
                    color = token
                if token in ("tv", "pc"):
                    color_range = token
            rate = _snap_fps(float(fps.group(1)) * (1000 if fps.group(2) else 1)) if fps else None
            r_rate = _snap_fps(float(tbr.group(1)) * (1000 if tbr.group(2) else 1)) if tbr else rate
            meta.video = {
                "codec": _codec_of(desc),
                "width": int(size.group(1)) if size else 0, "height": int(size.group(2)) if size else 0,
                "rotation": _rotation_of(rot.group(1)) if rot else 0, "color_space": color,
                "pix_fmt": pix_fmt.group(1) if pix_fmt else None, "color_range": color_range,
                "rate": r_rate, "avg_rate": rate, "nb_frames": None, "duration": None, "start": None,
            }
        elif kind == "Audio":
            hz = re.search(r"(\d+) Hz, ([^,]+)", desc)
            meta.audio.append({"codec": _codec_of(desc), "sample_rate": int(hz.group(1)) if hz else 0,
                               "channels": _layout_channels(hz.group(2)) if hz else 0,
                               "duration": None})
    return meta


def _read_meta(path: str) -> _Meta:
    ffprobe = ff.ffprobe_exe()
    return _meta_ffprobe(path, ffprobe) if ffprobe else _meta_ffmpeg(path)


def _decode_scan(path: str) -> tuple[int, float | None, bool]:
    """Decode the video stream once (no pixel conversion): exact frame count, the first frame's time
    (relative to the file start, as `-ss` counts) and whether frame spacing is regular.

    The timestamps come from framecrc lines of `wrapped_avframe` packets: cheap, nothing is copied.
    """
    cmd = [*ff.base_command(), "-i", path, "-map", "0:V:0", "-an", "-sn", "-dn",
           *ff.passthrough_args(ff.ffmpeg_exe()), "-enc_time_base", "1:1000000",
           "-c:v", "wrapped_avframe", "-f", "framecrc", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise LipsyncError(f"cannot decode the video in {path}:\n  {tail(proc.stderr)}")
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
                     color_space=v["color_space"] if v["color_space"] in SWS_MATRIX else None,
                     codec=v["codec"], pix_fmt=v.get("pix_fmt"),
                     color_range=v.get("color_range") if v.get("color_range") in ("tv", "pc") else None)


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
    return AudioInfo(duration=float(duration), sample_rate=a["sample_rate"], channels=a["channels"],
                     codec=a["codec"])
