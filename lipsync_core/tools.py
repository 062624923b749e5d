"""Where the ffmpeg and ffprobe binaries are.

System ffmpeg first (PATH, or $LIPSYNC_FFMPEG), else the static binary that the imageio-ffmpeg wheel ships.
That wheel has no ffprobe, so `ffprobe_exe()` may return None and callers fall back to ffmpeg itself.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from .errors import LipsyncError


@functools.cache
def ffmpeg_exe() -> str:
    env = os.environ.get("LIPSYNC_FFMPEG")
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
    env = os.environ.get("LIPSYNC_FFPROBE")
    if env:
        return env
    ff = ffmpeg_exe()
    sibling = os.path.join(os.path.dirname(ff), "ffprobe" + (".exe" if os.name == "nt" else ""))
    if os.path.isfile(sibling):
        return sibling
    return shutil.which("ffprobe")


def run_ffmpeg(args: list[str], what: str) -> subprocess.CompletedProcess:
    """Run ffmpeg to completion (no shell); raise LipsyncError with ffmpeg's last lines on failure."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args],
        capture_output=True,
    )
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise LipsyncError(f"ffmpeg failed while {what}:\n  " + "\n  ".join(tail))
    return proc
