"""`VideoEncoder`: frames streamed into a result file, written atomically: H.264 (yuv420p) + AAC in .mp4 (default),
ProRes 422 HQ (10-bit 4:2:2) + PCM in .mov, or FFV1 (lossless, the source's chroma and bit depth) + FLAC in .mkv.
`CODECS` is the one table of what each codec writes."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LipsyncError
from . import ffmpeg as ff
from .ffmpeg import SWS_FLAGS, SWS_MATRIX, YUV_SWS_FLAGS, tail
from .probe import fraction, pix_fmt_depth, probe_audio

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
AUTO_PRESET = "auto"  # the default: x264_preset_for picks by frame size
HD_PIXELS = 1280 * 720


def x264_preset_for(preset: str, width: int, height: int) -> str:
    """The x264 preset to run: a named one is itself; "auto" is "superfast" up to 1280x720 and "ultrafast"
    above. x264's work grows with the pixels while the generator's does not (it sees a 96x96 face): at 640x360
    the preset hardly shows in a run's speed, at 1920x1080 superfast costs about as much CPU as the generator
    and ultrafast far less, for somewhat bigger files at the same CRF (figures: README, Speed)."""
    if preset != AUTO_PRESET:
        return preset
    return "ultrafast" if int(width) * int(height) > HD_PIXELS else "superfast"


_AUDIO_RATE = 48000  # every output's audio rate: the editing standard, and any input rate resamples to it




@dataclass(frozen=True)
class Codec:
    name: str  # the --codec / job option value
    label: str  # for people
    extensions: tuple[str, ...]  # containers it is written in; the first is the default
    video_args: tuple[str, ...]  # after -c:v (H.264's preset and crf are added from the options)
    audio_args: tuple[str, ...]
    # frames cross the pipe as the source's own Y'CbCr at 16 bits (reader.FrameReader pix_fmt), not as BGR,
    # so that the pixels outside the mouth keep their samples (and a 10-bit source its 10 bits)
    faithful: bool
    lossless: bool


# Containers: H.264 in .mp4 as before (also .m4v / .mov / .mkv); ProRes in QuickTime .mov, its home, with PCM as
# ProRes masters carry; FFV1 in Matroska .mkv, where it is standard (the archive profile: level 3, intra-only,
# slice CRCs), with FLAC, so a lossless picture gets lossless sound. Blender 4.2-5.0 reads all three.
CODECS = {
    "h264": Codec("h264", "H.264", (".mp4", ".m4v", ".mov", ".mkv"), ("libx264",), ("aac",), False, False),
    "prores": Codec("prores", "ProRes 422 HQ", (".mov",), ("prores_ks", "-profile:v", "3", "-vendor", "apl0"),
                    ("pcm_s16le",), True, False),
    "ffv1": Codec("ffv1", "FFV1 (lossless)", (".mkv",),
                  ("ffv1", "-level", "3", "-g", "1", "-slices", "4", "-slicecrc", "1"), ("flac",), True, True),
}
# what write() takes: BGR uint8 (H, W, 3), planes (3, H, W) uint16, or 8-bit 4:2:0 planes one after another
# ((H * 3 / 2, W) uint8, even sizes; for a yuv420p result nothing converts them: they are encoded as they come)
FRAME_FORMATS = ("bgr24", "yuv444p16le", "yuv420p")


def codec_of(name: str) -> Codec:
    codec = CODECS.get(str(name).strip().lower())
    if codec is None:
        raise LipsyncError(f"unknown codec {name!r}: use {', '.join(CODECS)}")
    return codec


def check_output_name(path, codec: str) -> None:
    """A result's name must end in a container its codec is written in (no silent renaming of the user's path)."""
    c = codec_of(codec)
    suffix = Path(path).suffix.lower()
    if suffix and suffix not in c.extensions:
        raise LipsyncError(f"{c.label} is written as {' or '.join(c.extensions)}, but the output is {path}: "
                           f"name it {Path(path).stem}{c.extensions[0]}, or choose another --codec.")


def is_lossless(codec: str, crf: int) -> bool:
    """Whether the result keeps the frames it is given exactly (FFV1), or as closely as H.264 can (crf 0)."""
    c = codec_of(codec)
    return c.lossless or (c.name == "h264" and crf == 0)


def output_pix_fmt(codec: str, source_pix_fmt: str | None = None, keep_size: tuple[int, int] | None = None) -> str:
    """H.264: yuv420p (what every player reads). ProRes 422 HQ: yuv422p10le. FFV1: the source's chroma layout
    (4:2:0, 4:2:2, 4:4:4) and bit depth (8, 10, 12, 16), so nothing is lost.

    keep_size: the picture's (width, height) when the result must have exactly that size (a result that replaces
    its source in an editor). If the usual format cannot hold it (an odd size in 4:2:0), H.264 and FFV1 take full
    chroma instead (yuv444p; FFV1 at the usual bit depth); ProRes 422 has no 4:4:4 here and keeps padding."""
    name = codec_of(codec).name
    usual = _usual_pix_fmt(name, source_pix_fmt)
    if keep_size is None or name == "prores" or encoded_size(*keep_size, usual) == tuple(keep_size):
        return usual
    return re.sub(r"yuv4\d\dp", "yuv444p", usual)


def _usual_pix_fmt(name: str, source_pix_fmt: str | None) -> str:
    if name == "h264":
        return "yuv420p"
    if name == "prores":
        return "yuv422p10le"
    src = (source_pix_fmt or "yuv420p").lower()
    if re.search(r"420|nv12|nv21|p010|p016|^gray", src):
        chroma = "420"
    elif re.search(r"422|yuyv|uyvy|y210|p210|p216", src):
        chroma = "422"
    else:  # 4:4:4, RGB and the rare layouts (4:1:1, 4:4:0): full chroma keeps them all
        chroma = "444"
    depth = pix_fmt_depth(src)
    bits = "" if depth <= 8 else "10le" if depth <= 10 else "12le" if depth <= 12 else "16le"
    return f"yuv{chroma}p{bits}"


def encoded_size(width: int, height: int, pix_fmt: str = "yuv420p") -> tuple[int, int]:
    """The size a VideoEncoder file has for frames of this size: 4:2:0 holds only even sizes, 4:2:2 even widths,
    so an odd one gets one more column / row, at the right / bottom edge."""
    if "420" in pix_fmt:
        return width + width % 2, height + height % 2
    if "422" in pix_fmt:
        return width + width % 2, height
    return width, height


_MUXERS = {".mov": "mov", ".mkv": "matroska", ".m4v": "mp4"}


class VideoEncoder:
    """Stream frames into a `codec` file (CODECS; H.264 yuv420p +faststart + AAC by default).

    The output holds exactly the frames written, at `fps_rational`, and always an audio track: `audio_path`
    from `audio_start` seconds (negative: leading silence; past its end: silence), cut or padded with silence
    to exactly frames/fps seconds; without `audio_path` a silent track, so every clip has the same streams
    and editors treat them alike. Audio is 48 kHz, mono or stereo like the source, in the codec's audio format.

    `frame_format`: "bgr24" (write() takes (H, W, 3) uint8 BGR), "yuv444p16le" ((3, H, W) uint16 planes of
    the source's Y'CbCr, as FrameReader(pix_fmt="yuv444p16le") gives them; the faithful codecs) or "yuv420p"
    (8-bit 4:2:0 planes, (H * 3 / 2, W) uint8, as FrameReader(pix_fmt="yuv420p") gives them; H.264 results of
    8-bit 4:2:0 sources). The file's
    pixel format is output_pix_fmt(codec, source_pix_fmt); `color_range` tags it ("tv"/"pc", the source's).

    ffmpeg writes to a hidden `.NAME.partial.EXT` beside `out_path`, renamed on a successful close();
    abort() or an exception inside `with` removes it and leaves `out_path` untouched. Odd sizes (which
    yuv420p cannot hold) get one edge-replicated column / row at the right / bottom edge only, so the file's
    pixel (0, 0) is the source's: see `out_width`/`out_height` (sync reports the difference as `pad`).
    `exact_size`: no padding where the codec can avoid it: an odd size is written in full chroma instead
    (output_pix_fmt's keep_size), so the file has the frames' exact size (the add-on's results replace movies).
    H.264 ignores `crf`/`preset` for the other codecs (ProRes has a fixed quality, FFV1 is lossless).

    `color_space`: the source's `VideoInfo.color_space`, so the YUV matrix round-trips (None: BT.601,
    untagged, which matches how untagged sources decode).

    Frames are queued to a writer thread, not copied: do not modify an array after passing it to write().
    Give `n_frames` when known: audio is then encoded in the same pass; otherwise (or if a different number
    of frames arrives) a quick second pass muxes it, copying the video.
    """

    def __init__(self, out_path, width: int, height: int, fps_rational: str, audio_path=None,
                 audio_start: float = 0.0, n_frames: int | None = None, crf: int = 18,
                 preset: str = AUTO_PRESET, color_space: str | None = None, queue_frames: int = 8,
                 codec: str = "h264", frame_format: str = "bgr24", source_pix_fmt: str | None = None,
                 color_range: str | None = None, exact_size: bool = False):
        self.out_path = Path(out_path)
        self.codec = codec_of(codec)
        check_output_name(self.out_path, self.codec.name)
        if frame_format not in FRAME_FORMATS:
            raise ValueError(f"frame_format must be one of {FRAME_FORMATS}, not {frame_format!r}")
        self.frame_format = frame_format
        self.width, self.height = int(width), int(height)
        self.exact_size = bool(exact_size)
        self.pix_fmt = output_pix_fmt(self.codec.name, source_pix_fmt,
                                      (self.width, self.height) if exact_size else None)
        folder = self.out_path.parent
        if not folder.is_dir():
            raise LipsyncError(f"output folder {folder} does not exist: create it or choose another -o path.")
        if self.out_path.is_dir():
            raise LipsyncError(f"output {self.out_path} is a folder: give a file name such as clip.mp4.")
        if not os.access(folder, os.W_OK):
            raise LipsyncError(f"cannot write to {folder}: choose another -o path.")
        self.fps = fraction(fps_rational)
        if self.fps is None:
            raise ValueError(f"bad frame rate {fps_rational!r}")
        self.out_width, self.out_height = encoded_size(self.width, self.height, self.pix_fmt)
        if frame_format == "bgr24":
            self._frame_shape, self._frame_dtype = (self.height, self.width, 3), np.dtype(np.uint8)
        elif frame_format == "yuv420p":
            if self.width % 2 or self.height % 2:
                raise ValueError(f"yuv420p frames need an even size, not {self.width}x{self.height}")
            self._frame_shape, self._frame_dtype = (self.height * 3 // 2, self.width), np.dtype(np.uint8)
        else:
            self._frame_shape, self._frame_dtype = (3, self.height, self.width), np.dtype("<u2")
        self.audio_path = str(audio_path) if audio_path is not None else None
        self.audio_start = float(audio_start)
        self._audio_info = probe_audio(self.audio_path) if self.audio_path else None
        self.n_frames = n_frames
        self.crf, self.preset = crf, x264_preset_for(preset, self.width, self.height)
        self.frames_written = 0
        suffix = self.out_path.suffix or self.codec.extensions[0]
        self._muxer = _MUXERS.get(suffix.lower(), "mp4")
        self._tmp = folder / f".{self.out_path.stem}.partial{suffix}"
        self._tmp_video = folder / f".{self.out_path.stem}.partial-video{suffix}"
        self._done = False
        # one pass with audio when the length is known; otherwise video first, audio muxed at close()
        self._one_pass = n_frames is not None and n_frames > 0
        target = self._tmp if self._one_pass else self._tmp_video
        cmd = [*ff.base_command(), "-y", "-f", "rawvideo", "-pix_fmt", frame_format,
               "-video_size", f"{self.width}x{self.height}",
               "-framerate", f"{self.fps.numerator}/{self.fps.denominator}", "-i", "pipe:0"]
        if self._one_pass:
            a_in, a_filter, a_out = self._audio_args(n_frames)
            cmd += [*a_in, "-map", "0:v:0", "-map", "1:a:0", "-af", a_filter, *a_out]
        else:
            cmd += ["-map", "0:v:0", "-an"]
        c_args = list(self.codec.video_args)
        if self.codec.name == "h264":
            c_args += ["-preset", self.preset, "-crf", str(crf)]
        cmd += ["-vf", ",".join(self._video_filters(color_space, color_range)),
                *self._color_tags(color_space, color_range),
                "-c:v", *c_args, "-pix_fmt", self.pix_fmt,
                *ff.passthrough_args(cmd[0]), *self._mux_args(final=self._one_pass), str(target)]
        self._proc, self._stderr = ff.start_streaming(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        ff.grow_pipe(self._proc.stdin.fileno(), 1 << 20)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_frames))
        self._thread = threading.Thread(target=self._pump, args=(self._proc.stdin, self._queue),
                                        name="VideoEncoder", daemon=True)
        self._thread.start()

    # -- video

    def _video_filters(self, color_space: str | None, color_range: str | None = None) -> list[str]:
        chain = []
        if (self.out_width, self.out_height) != (self.width, self.height):
            dw, dh = self.out_width - self.width, self.out_height - self.height
            chain += [f"pad={self.out_width}:{self.out_height}:0:0",
                      f"fillborders=right={dw}:bottom={dh}:mode=smear"]
        if self.frame_format == "bgr24":
            matrix = SWS_MATRIX.get(color_space or "")
            # a full-range source gets full-range samples back (the tag alone would show limited ones washed out)
            chain.append(f"scale=flags={SWS_FLAGS}" + (f":out_color_matrix={matrix}" if matrix else "")
                         + (":out_range=full" if color_range == "pc" else ""))
        elif self.frame_format == "yuv420p":  # the source's own samples: no conversion when the file is yuv420p
            chain.append(f"scale=flags={SWS_FLAGS}")
        else:  # already the source's Y'CbCr: only subsample chroma back and narrow the samples (exact)
            chain.append(f"scale=flags={YUV_SWS_FLAGS}")
        chain.append(f"format={self.pix_fmt}")
        return chain

    @staticmethod
    def _color_tags(color_space: str | None, color_range: str | None = None) -> list[str]:
        """Tag the matrix we converted with (untagged sources stay untagged: both ways used BT.601)."""
        tags = ["-color_range", color_range] if color_range in ("tv", "pc") else []
        if color_space not in SWS_MATRIX:
            return tags
        tags += ["-colorspace", color_space]
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
        a_out = ["-c:a", *self.codec.audio_args, "-ac", str(channels), "-ar", str(_AUDIO_RATE)]
        if self.codec.audio_args[0] == "aac":
            a_out += ["-b:a", "192k" if channels == 2 else "128k"]
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
        """Queue one frame: (height, width, 3) uint8 BGR, or (3, height, width) uint16 (frame_format)."""
        if self._done:
            raise RuntimeError("encoder is closed")
        if frame.shape != self._frame_shape or frame.dtype != self._frame_dtype:
            raise ValueError(f"frame must be {self._frame_shape} {self._frame_dtype}, "
                             f"got {frame.shape} {frame.dtype}")
        self._check_alive()
        self._queue.put(np.ascontiguousarray(frame))
        self.frames_written += 1

    def write_many(self, frames: np.ndarray) -> None:
        """Queue an (n, *frame shape) array of frames (one pipe write)."""
        if self._done:
            raise RuntimeError("encoder is closed")
        if frames.ndim != 4 or frames.shape[1:] != self._frame_shape or frames.dtype != self._frame_dtype:
            raise ValueError(f"frames must be (n, {self._frame_shape}) {self._frame_dtype}, "
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
        return f"ffmpeg failed while writing {self.out_path}:\n  {tail(self._stderr.read())}"

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
        ff.run_ffmpeg(["-y", "-i", str(video), *a_in, "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
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


def encode_roundtrip(frames: list[np.ndarray], fps_rational: str, **encoder_options) -> list[np.ndarray]:
    """`frames` as a result file with these VideoEncoder options delivers them: encoded into a temporary file
    (the same codec and settings), decoded back in the same frame format and cropped to the frames' size."""
    from .reader import FrameReader

    frame_format = encoder_options.get("frame_format", "bgr24")
    if frame_format == "bgr24":
        h, w = frames[0].shape[:2]
    elif frame_format == "yuv420p":
        h, w = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
    else:
        h, w = frames[0].shape[1:]
    codec = codec_of(encoder_options.get("codec", "h264"))
    with tempfile.TemporaryDirectory(prefix="lipsync-roundtrip-") as folder:
        path = Path(folder) / f"roundtrip{codec.extensions[0]}"
        with VideoEncoder(path, w, h, fps_rational, n_frames=len(frames), **encoder_options) as enc:
            for f in frames:
                enc.write(f)
        with FrameReader(path, pix_fmt=frame_format, prefetch=0) as reader:
            out = list(reader)
    if frame_format in ("bgr24", "yuv420p"):  # (yuv420p sizes are even: nothing was padded)
        return [f[:h, :w] for f in out]
    return [f[:, :h, :w] for f in out]
