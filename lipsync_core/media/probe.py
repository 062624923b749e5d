"""What a media file holds: `probe(path) -> VideoInfo` (its frames as Blender counts them),
`probe_audio(path) -> AudioInfo`.

A movie's frames are Blender's frame grid, so frame n is the same picture in the engine and in the editor:
the rate is ffmpeg's guessed frame rate of the stream, the length the stream's duration times that rate
(rounded), and slot n shows the last frame whose timestamp is at or before the stream's start + n / rate (the
first frame when none is). On a constant-rate file that is every frame once; a variable-rate file (phones,
screen recorders) repeats a frame where one is missing and skips one where two fall into a slot.

Facts come from ffprobe's JSON; without ffprobe (imageio-ffmpeg's binary ships none) from `ffmpeg -i`'s text and
a quick decode pass. Both parsers fill the same `_Meta`, so everything after reading is shared.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from dataclasses import dataclass, field
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
    fps: float  # the frame grid's rate (the stream's nominal rate, as Blender uses it)
    fps_rational: str  # "30000/1001"
    frames: int  # slots on the frame grid: the strip length Blender shows
    duration: float  # seconds of video
    has_audio: bool
    # seconds from the file's start to the first video frame: what `-ss` positions are measured against
    start_time: float = 0.0
    # False for containers without a reliable index: readers decode from the start
    seekable: bool = True
    rotation: int = 0
    color_space: str | None = None  # the source's YUV matrix tag ("bt709", ...); pass it to VideoEncoder
    codec: str | None = None  # the video stream's codec as ffmpeg names it ("h264", ...)
    pix_fmt: str | None = None  # as decoded ("yuv420p", "yuv422p10le", ...)
    color_range: str | None = None  # "tv" (limited) or "pc" (full); None: untagged, read as limited
    decoded_frames: int = 0  # frames the stream decodes to (0: same as frames)
    # frame_map[n]: the decoded frame (in presentation order) grid slot n shows; None: slot n shows frame n
    frame_map: tuple[int, ...] | None = field(default=None, repr=False)
    # each decoded frame's time in seconds from the file's start (for seeking), when the frames were scanned
    frame_times: tuple[float, ...] | None = field(default=None, repr=False)
    variable_rate: bool = False  # frames missing from or crowded on the grid (frame_map repeats or skips)

    def source_frame(self, slot: int) -> int:
        """The decoded frame that grid slot `slot` shows."""
        if self.frame_map is not None:
            return self.frame_map[slot]
        return min(slot, (self.decoded_frames or self.frames) - 1)

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


def _int(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


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
    # width, height, rotation, rate, avg_rate, nb_frames, duration, start, time_base, start_pts, duration_ts
    video: dict | None = None
    audio: list | None = None  # [{sample_rate, channels, duration, start}]
    from_ffprobe: bool = True  # False: `ffmpeg -i`'s text, which has no stream durations


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
                "time_base": fraction(s.get("time_base")),
                "start_pts": _int(s.get("start_pts")),
                "duration_ts": _int(s.get("duration_ts")),
            }
        elif kind == "audio":
            meta.audio.append({"codec": s.get("codec_name"), "sample_rate": int(s.get("sample_rate") or 0),
                               "channels": int(s.get("channels") or 0),
                               "duration": _float(s.get("duration")), "start": _float(s.get("start_time"))})
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
    meta = _Meta(format_name=m.group(1), audio=[], from_ffprobe=False)
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
            tbn = re.search(r"([\d.]+)(k?) tbn", desc)
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
                "time_base": (Fraction(1, int(float(tbn.group(1)) * (1000 if tbn.group(2) else 1)))
                              if tbn and float(tbn.group(1)) >= 1 else None),
                "start_pts": None, "duration_ts": None,
            }
        elif kind == "Audio":
            hz = re.search(r"(\d+) Hz, ([^,]+)", desc)
            meta.audio.append({"codec": _codec_of(desc), "sample_rate": int(hz.group(1)) if hz else 0,
                               "channels": _layout_channels(hz.group(2)) if hz else 0,
                               "duration": None, "start": None})
    return meta


def _read_meta(path: str) -> _Meta:
    ffprobe = ff.ffprobe_exe()
    return _meta_ffprobe(path, ffprobe) if ffprobe else _meta_ffmpeg(path)


@dataclass(frozen=True)
class _Scan:
    pts: np.ndarray  # int64 timestamps of the decoded frames in `time_base` units, presentation order
    time_base: Fraction
    last_duration: int  # the last frame's duration (same units)


_SCAN_TIME_BASE = Fraction(1, 1_000_000)  # when the stream's own time base is unknown


def _scan_frames(path: str, time_base: Fraction | None) -> _Scan:
    """Decode the video stream once (no pixel conversion) for every frame's timestamp, as the file holds it.

    The timestamps come from framecrc lines of `wrapped_avframe` packets: cheap, nothing is copied. `-copyts`
    and the stream's own time base keep them exactly as Blender's reader sees them.
    """
    tb = time_base or _SCAN_TIME_BASE
    cmd = [*ff.base_command(), "-copyts", "-i", path, "-map", "0:V:0", "-an", "-sn", "-dn",
           *ff.passthrough_args(ff.ffmpeg_exe()), "-enc_time_base", f"{tb.numerator}:{tb.denominator}",
           "-c:v", "wrapped_avframe", "-f", "framecrc", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise LipsyncError(f"cannot decode the video in {path}:\n  {tail(proc.stderr)}")
    pts, last_duration = [], 0
    for line in proc.stdout.decode("ascii", "replace").splitlines():
        if line and line[0] != "#":
            parts = line.split(",")
            if len(parts) >= 4:
                pts.append(int(parts[2]))
                last_duration = int(parts[3])
    return _Scan(np.sort(np.asarray(pts, np.int64)), tb, last_duration)


# --------------------------------------------------------------------------------------------- frame grid


def _grid_rate(r_rate: Fraction | None, avg_rate: Fraction | None) -> Fraction | None:
    """ffmpeg's guess of a stream's frame rate (av_guess_frame_rate), which Blender plays a movie at: the
    nominal rate, unless it is implausibly high for what the stream averages."""
    if r_rate and avg_rate and float(avg_rate) < 70 and float(r_rate) > 210:
        return avg_rate
    return r_rate or avg_rate


def _round_half_away(x: float) -> int:
    """C's lround / round for the non-negative values used here."""
    return int(math.floor(x + 0.5))


def _grid_length(meta: _Meta, rate: Fraction, scan: _Scan | None) -> int | None:
    """How many frames Blender gives the strip: the stream's duration x rate, rounded; the container's
    duration (less the video's late start against the audio) when the stream has none; None when neither
    is known."""
    v = meta.video
    stream_seconds = None
    if v["duration_ts"] is not None and v["time_base"]:
        stream_seconds = v["duration_ts"] * float(v["time_base"])
    elif v["duration"] is not None:
        stream_seconds = v["duration"]
    elif not meta.from_ffprobe and scan is not None and len(scan.pts) and "matroska" not in meta.format_name:
        # without ffprobe: what the stream's own duration is for the usual containers
        stream_seconds = float((int(scan.pts[-1]) + scan.last_duration - int(scan.pts[0])) * scan.time_base)
    if stream_seconds is not None:
        return _round_half_away(stream_seconds * float(rate))
    if meta.format_duration is not None:
        video_start = v["start"] or 0.0
        audio_start = (meta.audio[0].get("start") or 0.0) if meta.audio else 0.0
        seconds = meta.format_duration - max(0.0, video_start - audio_start)
        return _round_half_away(seconds * float(rate))
    return v["nb_frames"]


def _grid_map(scan: _Scan, start_pts: int, rate: Fraction, length: int) -> np.ndarray:
    """For each grid slot, the decoded frame Blender shows: the last one whose timestamp is at or before
    start + round(n / rate) (in stream time-base units), the first frame when none is."""
    steps = float(1 / (rate * scan.time_base))  # time-base units per slot
    targets = start_pts + np.floor(np.arange(length, dtype=np.float64) * steps + 0.5).astype(np.int64)
    return np.maximum(np.searchsorted(scan.pts, targets, side="right") - 1, 0)


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
    fps = _grid_rate(v["rate"], v["avg_rate"])
    if fps is None:
        raise LipsyncError(f"cannot tell the frame rate of {path}: re-encode it to a constant frame rate, "
                           "e.g. ffmpeg -i IN -r 25 OUT.mp4")

    nb, avg = v["nb_frames"], v["avg_rate"]
    length = _grid_length(meta, fps, None)
    scan = frame_map = frame_times = None
    variable = False
    start = v["start"] - meta.format_start if v["start"] is not None else None
    # The quick case, no decoding: the container counts as many frames as the grid has slots and they average
    # the nominal rate. An edit list that trims frames (stream-copy cuts) breaks the count; so does a
    # variable rate.
    if nb and length == nb and avg and abs(float(fps) - float(avg)) <= 1e-3 * float(fps):
        decoded = nb
    else:
        scan = _scan_frames(path, v["time_base"])
        decoded = len(scan.pts)
        if decoded <= 0:
            raise LipsyncError(f"{path} has a video stream but no frame could be decoded: "
                               "the file may be damaged; re-export it.")
        if not meta.from_ffprobe:
            length = _grid_length(meta, fps, scan)
        length = length or decoded
        start_pts = v["start_pts"] if v["start_pts"] is not None else int(scan.pts[0])
        grid = _grid_map(scan, start_pts, fps, length)
        if decoded < length or not np.array_equal(grid, np.arange(length)):
            frame_map = tuple(int(k) for k in grid)
            n = min(length, decoded)
            variable = not np.array_equal(grid[:n], np.arange(n))
        seconds = scan.pts.astype(np.float64) * float(scan.time_base) - meta.format_start
        frame_times = tuple(float(t) for t in seconds)
        if start is None:
            start = frame_times[0]
    frames = length or decoded
    duration = v["duration"] if v["duration"] is not None else frames / float(fps)
    seekable = any(f in meta.format_name.split(",") for f in _SEEKABLE_FORMATS)
    return VideoInfo(path=path, width=width, height=height, fps=float(fps),
                     fps_rational=f"{fps.numerator}/{fps.denominator}", frames=int(frames),
                     duration=float(duration), has_audio=bool(meta.audio), start_time=float(start or 0.0),
                     seekable=seekable, rotation=v["rotation"],
                     color_space=v["color_space"] if v["color_space"] in SWS_MATRIX else None,
                     codec=v["codec"], decoded_frames=int(decoded), frame_map=frame_map,
                     frame_times=frame_times, variable_rate=variable, pix_fmt=v.get("pix_fmt"),
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
