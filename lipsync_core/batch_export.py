"""A batch folder for the farm, written for the Blender extension's Export Batch (worker command "export_batch").

The extension plans the cuts (which frames, which segments, which dub strips at which volumes) and sends them
here: each cut's dub is mixed into one WAV with the engine's own mixer (sync.mix_dub, the mix a local press
hears), then JOBS.json, checked as `batch` will read it, and the files the import needs. Every file is written
under a temporary name and renamed; a refused JOBS.json writes nothing.
"""

from __future__ import annotations

import os
import uuid

from . import provenance
from .errors import LipsyncError
from .progress import CancelToken, Progress

JOBS_NAME = "JOBS.json"
MIX_RATE = 48000  # the rate a local press muxes its dub at (sync.sync_edit)


def export_batch(folder: str, jobs: dict, mixes: list[dict], files: dict | None = None,
                 progress: Progress | None = None, cancel: CancelToken | None = None) -> dict:
    """Write `folder`/JOBS.json (`jobs`), each mix {"output" (relative to the folder), "dub" (sync_edit's dub
    parts), "seconds"} as a mono WAV, and `files` (name -> JSON data) beside it. Returns what was written."""
    from .batch import BatchError, check_batch
    from .sync import _write_wav, mix_dub

    progress = progress or Progress()
    cancel = cancel or CancelToken()
    if not folder or not os.path.isabs(folder):
        raise LipsyncError(f"the export folder must be an absolute path, not {folder!r}")
    path = os.path.join(folder, JOBS_NAME)
    try:
        check_batch(jobs, path)  # refused before anything is written
    except BatchError as exc:
        raise LipsyncError(f"the batch the extension made is not valid: {exc}") from None
    os.makedirs(folder, exist_ok=True)
    written, temps = [], []
    progress.start("mixing the dub", len(mixes))
    try:  # every mix under a temporary name first: a failure leaves an earlier export's files as they were
        for m in mixes:
            cancel.check()
            out = os.path.normpath(os.path.join(folder, m["output"]))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.{uuid.uuid4().hex[:12]}.tmp.wav")
            temps.append((tmp, out))
            _write_wav(tmp, mix_dub(m["dub"], float(m["seconds"]), sr=MIX_RATE), MIX_RATE)
            progress.advance("mixing the dub")
        for tmp, out in temps:
            os.replace(tmp, out)
            written.append(out)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.remove(tmp)
    for name, data in (files or {}).items():
        provenance.write_json_atomic(os.path.join(folder, name), data)
        written.append(os.path.join(folder, name))
    provenance.write_json_atomic(path, jobs)  # last: a folder with JOBS.json is complete
    written.append(path)
    return {"folder": folder, "jobs_file": path, "jobs": len(jobs.get("jobs") or []), "files": written}
