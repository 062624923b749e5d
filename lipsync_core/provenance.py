"""What an output was made from: a content key, kept beside the output, so a re-run redoes only what changed.

A finished output `cut.mp4` gets a record `cut.mp4.lipsync.json` (written after the output, atomically):
```
{"version": 1, "key": HEX, "made_from": {...}, "output": {"size", "sampled_sha256"}, "frames", "device", ...}
```
`key` is the sha256 of `made_from` (canonical JSON): the video's content identity and the frame range, the dub
samples under the range, the checkpoint's identity and the options that change pixels or sound. Identities are
path-independent, so a batch folder copied to shared storage, or mounted under another path, still matches.

- Video and checkpoint: size + sha256 of three 1 MiB samples (start, middle, end). A multi-GB source is never
  read whole; any re-encode or re-export changes the size or the samples.
- Audio: sha256 of the decoded samples (native rate and channels, 16-bit) of exactly the range the output
  plays. An uncompressed dub edited in place keeps its size, so a sampled hash would miss a re-recorded line.

An output is current when it exists, its record's key equals the key computed now, and the output's own size
and samples equal those recorded (a replaced or truncated output is redone).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path

RECORD_VERSION = 1
# Bump when the engine's output changes for the same inputs and options: every record then misses once.
RECIPE_VERSION = 1
RECORD_SUFFIX = ".lipsync.json"
_SAMPLE = 1 << 20
_memo: dict[tuple, dict] = {}
_memo_lock = threading.Lock()  # batch.prepare runs jobs' look-ups in threads

# SyncOptions fields that change an output's pixels or sound. Not here: device, batch_size, cache (same
# picture up to the precision the device runs at; see README "Batch / farm").
PIXEL_OPTIONS = ("segments", "box", "pads", "smooth", "detector", "face", "face_at", "blend", "match",
                 "detect_width", "detect_every", "detect_max_every", "min_segment_seconds", "max_gap_seconds", "crf",
                 "preset", "codec", "exact_size")


def file_identity(path: str | os.PathLike) -> dict:
    """{"size", "sampled_sha256"}: the file's size and a hash of up to three 1 MiB samples (whole if small).

    Remembered per (path, size, mtime, inode): a thousand cuts of one reel read its samples once."""
    st = os.stat(path)
    memo = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _memo_lock:
        if memo in _memo:
            return dict(_memo[memo])
    size = st.st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= 3 * _SAMPLE:
            h.update(f.read())
        else:
            for offset in (0, (size - _SAMPLE) // 2, size - _SAMPLE):
                f.seek(offset)
                h.update(f.read(_SAMPLE))
    ident = {"size": size, "sampled_sha256": h.hexdigest()}
    with _memo_lock:
        _memo[memo] = ident
    return dict(ident)


def audio_identity(path: str | os.PathLike, start: float, seconds: float | None) -> dict:
    """{"samples_sha256", "start", "seconds"}: a hash of the decoded samples from `start` for `seconds`
    (None: to the end). A negative start is leading silence: only the file's part is hashed, the start is kept."""
    from .media import run_ffmpeg

    args = ["-ss", f"{max(start, 0.0):.6f}"] if start > 0 else []
    args += ["-i", str(path)]
    if seconds is not None:
        args += ["-t", f"{max(seconds + min(start, 0.0), 0.0):.6f}"]
    args += ["-map", "0:a:0", "-f", "s16le", "-c:a", "pcm_s16le", "pipe:1"]
    pcm = run_ffmpeg(args, f"reading the audio of {path}").stdout
    return {"samples_sha256": hashlib.sha256(pcm).hexdigest(), "start": round(float(start), 6),
            "seconds": None if seconds is None else round(float(seconds), 6)}


def pixel_options(opts) -> dict:
    """The options (a SyncOptions, or a dict of its fields) that change what an output looks or sounds like,
    as plain JSON data; fields a dict leaves out take SyncOptions' defaults."""
    from .sync import SyncOptions

    d = asdict(SyncOptions()) | (opts if isinstance(opts, dict) else asdict(opts))
    out = {}
    for k in PIXEL_OPTIONS:
        v = d[k]
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def made_from(video: str, frames: tuple[int, int] | None, audio: str, audio_start: float, seconds: float | None,
              checkpoint: str, opts) -> dict:
    """What an output is made of: `frames` (start, end exclusive; None: the whole video) of `video`, the
    audio from `audio_start` for `seconds` (None: to its end), the checkpoint, the options. The batch and
    (later) the add-on's "redo only what changed" build their keys here, so their records agree."""
    return {"video": file_identity(video), "frames": None if frames is None else [int(frames[0]), int(frames[1])],
            "audio": audio_identity(audio, audio_start, seconds), "checkpoint": file_identity(checkpoint),
            "options": pixel_options(opts)}


def make_key(made_from: dict) -> str:
    text = json.dumps({"recipe": RECIPE_VERSION, **made_from}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def record_path(output: str | os.PathLike) -> Path:
    return Path(str(output) + RECORD_SUFFIX)


def read_record(output: str | os.PathLike) -> dict | None:
    """The output's record, or None when missing, unreadable or of another version."""
    try:
        with open(record_path(output), encoding="utf-8") as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("version") == RECORD_VERSION else None


def write_record(output: str | os.PathLike, made_from: dict, **extra) -> dict:
    """Record what `output` (already at its final name) was made from; atomic (temporary name, then rename)."""
    rec = {"version": RECORD_VERSION, "key": make_key(made_from), "made_from": made_from,
           "output": file_identity(output), **extra}
    path = record_path(output)
    write_json_atomic(path, rec)
    return rec


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write JSON under a temporary name in the same folder, then rename (readable like any new file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600: others on the farm read records and reports too
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def remove_record(output: str | os.PathLike) -> None:
    try:
        os.remove(record_path(output))
    except FileNotFoundError:
        pass


def is_current(output: str | os.PathLike, key: str) -> bool:
    """True when `output` exists, was made from `key`, and is still the file that was recorded."""
    rec = read_record(output)
    if rec is None or rec.get("key") != key or not os.path.isfile(output):
        return False
    try:
        return rec.get("output") == file_identity(output)
    except OSError:
        return False
