"""Variable-frame-rate clips as phones and screen recorders write them, made from a constant-rate source by
dropping frames and keeping their timestamps (`-fps_mode passthrough`), and a way to read back which source
frame a picture is: each made frame carries its index as an 8-bit bar code along its top edge.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from lipsync_core.media import ffmpeg_exe
from lipsync_core.media.ffmpeg import passthrough_args
from tools.sample_media import astronaut_frames, write_video

W, H = 160, 120
BAR = 24  # rows of the code bar
BIT_W = W // 8


def coded_frames(n: int) -> np.ndarray:
    """Astronaut frames (a face in the middle) with frame i's index as black/white blocks over the top rows."""
    frames = astronaut_frames(n, W, H)
    for i in range(n):
        for b in range(8):
            frames[i, :BAR, b * BIT_W : (b + 1) * BIT_W] = 255 if (i >> b) & 1 else 0
    return frames


def read_code(img: np.ndarray) -> int:
    """The index a coded frame carries (read from the middle of each block, robust to compression)."""
    bits = [img[4 : BAR - 4, b * BIT_W + 4 : (b + 1) * BIT_W - 4].mean() > 128 for b in range(8)]
    return sum(1 << b for b, on in enumerate(bits) if on)


def ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def drop_frames(src: Path, out: Path, select: str, setpts: str = "PTS", time_base: str | None = None) -> Path:
    """Re-encode `src` keeping only the frames `select` keeps, at their own timestamps (gaps stay gaps)."""
    tb = ["-enc_time_base", time_base] if time_base else []
    ff("-i", str(src), "-vf", f"select='{select}',setpts='{setpts}'", *passthrough_args(ffmpeg_exe()), *tb,
       "-c:v", "libx264", "-preset", "ultrafast", "-crf", "10", "-c:a", "copy", str(out))
    return out


def made_vfr_clips(d: Path, n: int = 60) -> dict[str, Path]:
    """Coded clips: a 30 fps source and variable-rate versions of it (plus the kinds probe must still count)."""
    d.mkdir(parents=True, exist_ok=True)
    src = write_video(d / "cfr30.mp4", coded_frames(n), fps="30")
    c = {"cfr": src}
    # every 7th frame lost: 2/30 s gaps
    c["drop"] = drop_frames(src, d / "drop.mp4", "not(eq(mod(n,7),3))")
    # the same, starting 0.033 s late, like the phone clip in issue 14
    c["late"] = drop_frames(src, d / "late.mp4", "not(eq(mod(n,7),3))", "PTS+0.033/TB")
    # timestamps off the grid by up to 4 ms, a 90 kHz time base, and lost frames
    c["jitter"] = drop_frames(src, d / "jitter.mp4", "not(eq(mod(n,11),5))", "PTS+0.004*sin(N)/TB", "1:90000")
    # Matroska keeps no stream duration and a millisecond time base: its length comes from the container
    ff("-i", str(c["late"]), "-c", "copy", str(d / "late.mkv"))
    c["mkv"] = d / "late.mkv"
    # 25 fps, then 50 fps
    ff("-i", str(src), "-vf", "setpts='if(lt(N,30),N/25,30/25+(N-30)/50)/TB'", *passthrough_args(ffmpeg_exe()),
       "-enc_time_base", "1:1000", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "10", str(d / "steps.mp4"))
    c["steps"] = d / "steps.mp4"
    # a phone-like 29.97 fps stream: B-frames (reordered timestamps), 0.05 s late, every 5th frame lost
    ntsc = write_video(d / "ntsc.mp4", coded_frames(n), fps="30000/1001")
    ff("-i", str(ntsc), "-vf", "select='not(eq(mod(n,5),2))',setpts='PTS+0.05/TB'", *passthrough_args(ffmpeg_exe()),
       "-c:v", "libx264", "-preset", "medium", "-bf", "3", "-crf", "10", str(d / "bframes.mp4"))
    c["bframes"] = d / "bframes.mp4"
    # WebM (VP9): no stream duration, the container's is used
    ff("-i", str(ntsc), "-vf", "select='not(eq(mod(n,8),3))'", *passthrough_args(ffmpeg_exe()),
       "-c:v", "libvpx-vp9", "-deadline", "realtime", "-crf", "20", "-b:v", "0", str(d / "vp9.webm"))
    c["webm"] = d / "vp9.webm"
    # MPEG-TS (no index, a start offset) and a stream-copy cut (an edit list hides frames the container counts)
    ff("-i", str(src), "-c", "copy", "-f", "mpegts", str(d / "cfr.ts"))
    c["ts"] = d / "cfr.ts"
    ff("-ss", "0.9", "-i", str(src), "-c", "copy", str(d / "cut.mp4"))
    c["cut"] = d / "cut.mp4"
    return c


def real_vfr_clip(shared: Path, out: Path) -> Path:
    """3 s of real footage, small, with every 6th frame lost and the stream starting 0.04 s late."""
    small = out.with_name("real_small.mp4")
    ff("-i", str(shared / "talking_head_a.mp4"), "-t", "3", "-vf", "scale=212:212", "-c:v", "libx264",
       "-preset", "ultrafast", "-crf", "14", "-c:a", "aac", str(small))
    return drop_frames(small, out, "not(eq(mod(n,6),2))", "PTS+0.04/TB")
