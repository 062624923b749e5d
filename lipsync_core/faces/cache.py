"""Detection cache: running the same video again (say, with other audio) skips face detection.

Key = blake2b of the file's bytes (streamed, fine for GB files) + the detection settings (detector name,
scale, detect_every, select, frame range, ...), so a re-encoded or edited file, or other settings, miss.
Entries are JSON files under $LIPSYNC_CACHE_DIR/faces/ (default ~/.cache/lipsync/faces/), written atomically.
A cache that cannot be read or written never fails a job: it just misses.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .track import FaceSet, FaceTrack

CACHE_VERSION = 3  # bump when tracking changes what a track holds for the same input
_CHUNK = 1 << 20
_digests: dict[tuple, str] = {}


def cache_dir() -> Path:
    env = os.environ.get("LIPSYNC_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "faces"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lipsync" / "faces"


def file_digest(path: str | os.PathLike) -> str:
    """blake2b of the file's content; remembered per (path, size, mtime, inode) so load+save hash once."""
    p = Path(path).resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo not in _digests:
        h = hashlib.blake2b(digest_size=20)
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        _digests[memo] = h.hexdigest()
    return _digests[memo]


def _settings_json(settings: dict) -> str:
    # tuples and lists both become JSON lists, so (0, 10) and [0, 10] give the same key
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(video_path: str | os.PathLike, settings: dict) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(f"v{CACHE_VERSION}\0{file_digest(video_path)}\0{_settings_json(settings)}".encode())
    return h.hexdigest()


def cache_path(video_path: str | os.PathLike, settings: dict) -> Path:
    return cache_dir() / f"{cache_key(video_path, settings)}.json"


def load_track(video_path: str | os.PathLike, settings: dict) -> FaceTrack | None:
    """The cached track for this file and settings, or None (miss, unreadable or foreign entry)."""
    return _load(video_path, settings, "track", FaceTrack.from_dict)


def save_track(video_path: str | os.PathLike, settings: dict, track: FaceTrack) -> Path | None:
    """Store the track (temp file, then rename, so a reader never sees half a file); None if it cannot."""
    return _save(video_path, settings, "track", track.to_dict())


def load_faceset(video_path: str | os.PathLike, settings: dict) -> FaceSet | None:
    """The cached faces (every face followed, with mouth motion) for this file and settings, or None."""
    return _load(video_path, {**settings, "all_faces": True}, "faces", FaceSet.from_dict)


def save_faceset(video_path: str | os.PathLike, settings: dict, faces: FaceSet) -> Path | None:
    return _save(video_path, {**settings, "all_faces": True}, "faces", faces.to_dict())


def _load(video_path, settings: dict, what: str, build):
    try:
        path = cache_path(video_path, settings)
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("version") != CACHE_VERSION or data.get("settings") != _settings_json(settings):
            return None
        return build(data[what])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(video_path, settings: dict, what: str, payload: dict) -> Path | None:
    tmp = None
    try:
        path = cache_path(video_path, settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": CACHE_VERSION, "video": os.path.basename(os.fspath(video_path)),
                "settings": _settings_json(settings), what: payload}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, path)
        tmp = None
        return path
    except OSError:
        return None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
