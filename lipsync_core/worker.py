"""`python -m lipsync_core.worker`: the Blender extension's engine process.

One JSON job in (first stdin line, or `--job FILE`), one JSON event per line out, exactly one final
`result`, `cancelled` or `error`. Cancel: the line `cancel` on stdin, SIGTERM or SIGINT; the engine stops
between batches and removes what it started writing. Protocol: docs/CONTRACTS.md.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import traceback

from .errors import Cancelled, LipsyncError
from .progress import CancelToken, JsonProgress


def _options(job: dict):
    """The job's options as SyncOptions; an unknown key is refused (a misspelt option must not be ignored)."""
    import dataclasses

    from .sync import SyncOptions

    o = SyncOptions()
    known = [f.name for f in dataclasses.fields(SyncOptions)]
    options = job.get("options") or {}
    if not isinstance(options, dict):
        raise LipsyncError(f"the job's options must be a JSON object, not {type(options).__name__}")
    for key, value in options.items():
        if key not in known:
            raise LipsyncError(f"unknown option {key!r} in the job: known options are {', '.join(known)}")
        if value is None:
            continue
        if key in ("pads", "box"):
            value = tuple(int(v) for v in value)
        if key == "face_at":
            value = tuple(float(v) for v in value)
        setattr(o, key, value)
    return o


def run_job(job: dict, progress: JsonProgress, cancel: CancelToken) -> dict:
    from .sync import find_segments, find_segments_many, sync_clips, sync_edit

    command = job.get("command")
    opts = _options(job)
    if command == "segments" and job.get("clips"):  # several ranges of several files
        return find_segments_many(job["clips"], opts, progress, cancel)
    if command == "segments":
        return find_segments(_need(job, "video"), opts, int(job.get("start_frame") or 0),
                                    job.get("end_frame"), progress, cancel)
    if command == "sync":
        clips = job.get("clips")
        if not clips:
            raise LipsyncError("the job has no clips to sync")
        if not job.get("video"):  # the edit form: every clip names its own video and dub
            return sync_edit(job.get("checkpoint") or "", clips, opts, progress, cancel)
        return sync_clips(_need(job, "video"), _need(job, "audio"), job.get("checkpoint") or "", clips,
                          opts, progress, cancel)
    if command == "export_batch":  # the add-on's Export Batch: the dub mixes and JOBS.json of a farm folder
        from .batch_export import export_batch

        return export_batch(_need(job, "folder"), job.get("jobs") or {}, job.get("mixes") or [], job.get("files"),
                            progress, cancel)
    if command == "check":  # the add-on's "Check" button: is this Python able to run the engine?
        import platform

        import torch

        return {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.cuda.is_available(),
                "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
    raise LipsyncError(f"unknown job command {command!r}: expected segments, sync, export_batch or check")


def _need(job: dict, key: str) -> str:
    value = job.get(key)
    if not value:
        raise LipsyncError(f"the job has no {key!r}")
    return str(value)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    events_out = sys.stdout
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the event stream
    progress = JsonProgress(stream=events_out)
    cancel = CancelToken()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: cancel.cancel())
    try:
        if len(argv) == 2 and argv[0] == "--job":
            with open(argv[1], encoding="utf-8") as fh:
                job = json.load(fh)
        else:
            line = sys.stdin.readline()
            if not line.strip():
                raise LipsyncError("no job: send one JSON object on the first line of stdin")
            job = json.loads(line)

        def watch_stdin():  # anything after the job is a control line
            for ctl in sys.stdin:
                if ctl.strip().lower() == "cancel":
                    cancel.cancel()
                    return
            # stdin closed: the parent is gone or done talking; keep working (CLI-style use)

        threading.Thread(target=watch_stdin, daemon=True).start()
        result = run_job(job, progress, cancel)
        progress.emit({"event": "result", **result})
        return 0
    except (Cancelled, KeyboardInterrupt):
        progress.emit({"event": "cancelled"})
        return 130
    except LipsyncError as exc:
        progress.emit({"event": "error", "message": str(exc), "traceback": ""})
        return 2
    except json.JSONDecodeError as exc:
        progress.emit({"event": "error", "message": f"the job is not valid JSON: {exc}", "traceback": ""})
        return 2
    except Exception as exc:  # a bug or a crash in a library: pass the traceback to the editor
        progress.emit({"event": "error", "message": f"the engine failed: {exc.__class__.__name__}: {exc}",
                       "traceback": traceback.format_exc()})
        return 1
    finally:
        try:
            events_out.flush()
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
