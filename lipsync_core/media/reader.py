"""`FrameReader`: BGR uint8 frames (or the source's own Y'CbCr at 16 bits) streamed out of an ffmpeg process,
on the probe's frame grid.

Frame-exact start (seek or trim), optional downscale in the decoder, a prefetch thread; nothing holds the
whole video in memory. A variable-rate file is decoded frame by frame (`-fps_mode passthrough`) and put on
the grid here, each decoded frame repeated for the slots it covers (or skipped when it covers none), so the
mapping is the probe's exactly rather than an ffmpeg `fps` filter's nearest-slot rounding.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Iterator

import numpy as np

from ..errors import LipsyncError
from . import ffmpeg as ff
from .ffmpeg import SWS_FLAGS, YUV_SWS_FLAGS, tail
from .probe import VideoInfo, probe

# what a frame is, per pixel format asked of ffmpeg: shape from (height, width), dtype
FRAME_FORMATS = {"bgr24": (lambda h, w: (h, w, 3), np.uint8),
                 "yuv444p16le": (lambda h, w: (3, h, w), np.dtype("<u2")),
                 # the planes one after another (I420): Y (h, w), then Cb and Cr (h/2, w/2); even sizes only
                 "yuv420p": (lambda h, w: (h * 3 // 2, w), np.uint8)}


def _read_exact(stdout, shape: tuple[int, int, int], dtype=np.uint8) -> np.ndarray | None:
    """One frame from a raw pipe into a fresh array; None at the end of the stream."""
    buf = np.empty(shape, dtype)
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

    def __init__(self, cmd: list[str], shape: tuple[int, int, int], n: int, path: str, prefetch: int,
                 repeats: np.ndarray | None = None, dtype=np.uint8):
        # n decoded frames; repeats[i]: how many grid slots decoded frame i fills (None: one each)
        self.shape, self.n, self.path, self.repeats, self.dtype = shape, n, path, repeats, dtype
        self.slots = self._slots()
        self.proc, self.stderr = ff.start_streaming(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        ff.grow_pipe(self.proc.stdout.fileno(), 1 << 20)
        self.stop = threading.Event()
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self.thread = None
        if prefetch > 0:
            self.thread = threading.Thread(target=self._pump, name="FrameReader", daemon=True)
            self.thread.start()

    def read(self) -> np.ndarray | None:
        """Next grid frame, None at the end; LipsyncError if ffmpeg failed."""
        if self.thread is None:
            return next(self.slots, None)
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def _read(self) -> np.ndarray | None:
        frame = _read_exact(self.proc.stdout, self.shape, self.dtype)
        if frame is None:
            # ffmpeg ended early: an error, or the file held fewer frames than probed (then just stop)
            rc = self.proc.wait()
            if rc != 0 and not self.stop.is_set():
                self.stderr.seek(0)
                why = tail(self.stderr.read())
                raise LipsyncError(f"ffmpeg failed while decoding {self.path}:\n  {why}")
        return frame

    def _slots(self) -> Iterator[np.ndarray]:
        """Decoded frames put on the grid: each one as often as it fills slots, a fresh array every time."""
        for i in range(self.n):
            frame = self._read()
            if frame is None:
                return
            reps = 1 if self.repeats is None else int(self.repeats[i])
            for r in range(reps):
                yield frame if r == reps - 1 else frame.copy()

    def _pump(self) -> None:
        try:
            for frame in self.slots:
                if self.stop.is_set():
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

    Frames are slots of the probe's frame grid (`VideoInfo.frames`, what Blender shows): frame k of the reader
    is grid frame start_frame + k (end_frame exclusive, clamped to the video); on a constant-rate file that is
    frame start_frame + k of a full decode. `size=(w, h)` scales in ffmpeg (cheap small frames for face
    detection). A prefetch thread keeps `prefetch` frames decoded ahead of the consumer (0: read inline).
    Every frame is a fresh array the caller may keep or modify. `pix_fmt="yuv444p16le"`: (3, H, W) uint16
    planes of the source's own Y'CbCr instead (chroma repeated to full size, samples shifted to 16 bits: an
    encoder that subsamples them back to the source's format gets the source's samples exactly). Use as a
    context manager (or call close()) to stop ffmpeg when leaving early.
    If the file ends before end_frame (a damaged tail), iteration just stops: check `frames_read`.
    """

    def __init__(self, path, start_frame: int = 0, end_frame: int | None = None,
                 size: tuple[int, int] | None = None, info: VideoInfo | None = None, prefetch: int = 4,
                 pix_fmt: str = "bgr24"):
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
        if pix_fmt not in FRAME_FORMATS:
            raise ValueError(f"pix_fmt must be one of {sorted(FRAME_FORMATS)}, not {pix_fmt!r}")
        if pix_fmt == "yuv420p" and (self.width % 2 or self.height % 2):
            raise ValueError(f"yuv420p frames need an even size, not {self.width}x{self.height}")
        self.pix_fmt = pix_fmt
        self.frames_read = 0
        # the decoded frames [first, last] these slots show, and how many slots each one fills
        self._first = self.info.source_frame(start) if len(self) else 0
        self._repeats = None
        n_decoded = len(self)
        if self.info.frame_map is not None and len(self):
            shown = np.asarray(self.info.frame_map[start:end], np.int64) - self._first
            self._repeats = np.bincount(shown)
            n_decoded = len(self._repeats)
        self._dec: _Decoder | None = None
        if len(self) > 0:
            self._dec = _Decoder(self._command(n_decoded), self.shape, n_decoded, self.path, prefetch,
                                 self._repeats, FRAME_FORMATS[self.pix_fmt][1])

    def __len__(self) -> int:
        return self.end_frame - self.start_frame

    @property
    def shape(self) -> tuple[int, int, int]:
        return FRAME_FORMATS[self.pix_fmt][0](self.height, self.width)

    def _command(self, n_decoded: int) -> list[str]:
        cmd = ff.base_command()
        filters = []
        first, times = self._first, self.info.frame_times
        if first > 0 and self.info.seekable:
            # Midway between decoded frames k-1 and k: immune to timestamp rounding. Input -ss decodes from
            # the keyframe before and drops frames earlier than t, so the first frame out is exactly k.
            if times is not None:
                t = (times[first - 1] + times[first]) / 2
            else:
                t = self.info.start_time + (first - 0.5) / self.info.fps
            cmd += ["-ss", f"{max(t, 0.0):.6f}"]
        elif first > 0:
            filters.append(f"trim=start_frame={first}")
        cmd += ["-i", self.path, "-map", "0:V:0", "-an", "-sn", "-dn"]
        if (self.width, self.height) != (self.info.width, self.info.height):
            filters.append(f"scale={self.width}:{self.height}:flags=bilinear")
        flags = YUV_SWS_FLAGS if self.pix_fmt == "yuv444p16le" else SWS_FLAGS
        if filters:
            filters.append(f"format={self.pix_fmt}")  # scale and convert in one swscale pass
            cmd += ["-vf", ",".join(filters)]
        cmd += [*ff.passthrough_args(cmd[0]), "-frames:v", str(n_decoded), "-sws_flags", flags,
                "-f", "rawvideo", "-pix_fmt", self.pix_fmt, "pipe:1"]
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

