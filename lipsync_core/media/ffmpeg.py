"""Finding the ffmpeg and ffprobe binaries and running them.

System ffmpeg first (PATH, or $LIPSYNC_FFMPEG), else the static binary that the imageio-ffmpeg wheel ships.
That wheel has no ffprobe, so `ffprobe_exe()` may return None and `probe` reads `ffmpeg -i` instead.
Also the swscale settings every conversion shares, so reader and encoder round-trip the same way.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile

from ..errors import LipsyncError

# yuv <-> bgr24 with these flags round-trips losslessly in luma (swscale's default drifts ~1.7 levels darker
# per generation, visible where the unchanged frame meets the pasted mouth) and costs no more.
SWS_FLAGS = "bilinear+accurate_rnd+full_chroma_int"
# The faithful path's Y'CbCr <-> yuv444p16le: chroma repeated up and picked back down (nearest neighbour) is an
# exact round trip, which no interpolating filter is (colour.py).
YUV_SWS_FLAGS = "neighbor+accurate_rnd"
# ffprobe colour matrix names -> swscale's, so an encode converts with the matrix its source decoded with
SWS_MATRIX = {"bt709": "bt709", "smpte170m": "smpte170m", "bt470bg": "bt470", "bt2020nc": "bt2020",
              "bt2020c": "bt2020", "smpte240m": "smpte240m", "fcc": "fcc"}


def _from_env(var: str) -> str | None:
    """The program an environment variable names (a path or a name on PATH); None when unset."""
    value = os.environ.get(var)
    if not value:
        return None
    found = shutil.which(value)
    if found is None:
        raise LipsyncError(f"{var} is set to {value!r}, which is not a program that can run: "
                           "point it at the binary or unset it.")
    return found


@functools.cache
def ffmpeg_exe() -> str:
    env = _from_env("LIPSYNC_FFMPEG")
    if env:
        return env
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # the wheel is missing or has no binary for this platform
        raise LipsyncError(
            "ffmpeg was not found. Install it (apt install ffmpeg / brew install ffmpeg) "
            "or `pip install imageio-ffmpeg`, or set LIPSYNC_FFMPEG to the binary."
        ) from exc


@functools.cache
def ffprobe_exe() -> str | None:
    env = _from_env("LIPSYNC_FFPROBE")
    if env:
        return env
    ff = ffmpeg_exe()
    sibling = os.path.join(os.path.dirname(ff), "ffprobe" + (".exe" if os.name == "nt" else ""))
    if os.path.isfile(sibling):
        return sibling
    return shutil.which("ffprobe")


def tail(stderr: bytes | str, n: int = 6) -> str:
    """The last `n` non-empty lines of ffmpeg's stderr, for an error message."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return "\n  ".join(lines[-n:]) or "(no message)"


def base_command() -> list[str]:
    """ffmpeg, quiet except for errors, never reading the terminal."""
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]


def run_ffmpeg(args: list[str], what: str) -> subprocess.CompletedProcess:
    """Run ffmpeg to completion (no shell); raise LipsyncError with ffmpeg's last lines on failure."""
    proc = subprocess.run([*base_command(), *args], capture_output=True)
    if proc.returncode != 0:
        tail_lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise LipsyncError(f"ffmpeg failed while {what}:\n  " + "\n  ".join(tail_lines))
    return proc


@functools.cache
def passthrough_args(ff: str) -> tuple[str, ...]:
    """Keep every decoded frame exactly once. `-fps_mode` (ffmpeg >= 5.1) replaced `-vsync` (gone in 7+)."""
    try:
        help_text = subprocess.run([ff, "-hide_banner", "-h", "long"], capture_output=True, text=True,
                                   check=False).stdout
    except OSError:
        help_text = ""
    if "-fps_mode" in help_text or "-vsync" not in help_text:
        return ("-fps_mode", "passthrough")
    return ("-vsync", "passthrough")


def start_streaming(cmd: list[str], stdin, stdout):
    """A streaming ffmpeg with its stderr in a temporary file (read back for the error message), unbuffered
    pipes; LipsyncError if the binary cannot start. Returns (process, stderr file)."""
    stderr = tempfile.TemporaryFile()
    try:
        return subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr, bufsize=0), stderr
    except OSError as exc:
        stderr.close()
        raise LipsyncError(f"could not start ffmpeg ({cmd[0]}): {exc}") from exc


def grow_pipe(fd: int, size: int) -> None:
    """Bigger pipe = fewer context switches per frame (Linux only; silently skipped elsewhere)."""
    try:
        import fcntl

        fcntl.fcntl(fd, 1031, size)  # F_SETPIPE_SZ
    except (ImportError, OSError, ValueError):
        pass
