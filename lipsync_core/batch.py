"""`python -m lipsync_core batch JOBS.json`: many lip-sync jobs from one file, resumable, here or on Ray.

JOBS.json (format: README "Batch / farm", docs/CONTRACTS.md) is checked whole before anything runs: an unknown
key or a bad value is refused naming the job and the key (exit 2). Option names and checks are the `sync`
command's own (options.add_sync_options), so the CLI and a batch accept exactly the same values.

Each job is prepared here (inputs probed, content key computed, see provenance.py): a job whose output is
current is skipped, one whose inputs are missing or unreadable fails, the rest run, in this process one after
another with one model load, or as Ray tasks (farm.py). An output is written under a temporary name unique to
the attempt and renamed when complete; its record is written after it.

A job with `face_ranges` / `dub_ranges` is one cut of an edit (what the Blender extension's Export Batch
writes): it runs through sync.sync_edit, the press's own code path, so the farm's result equals the press's.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import provenance
from .errors import Cancelled, LipsyncError
from .progress import CancelToken, JsonProgress, Progress

JOBS_VERSION = 1
REPORT_VERSION = 1
BATCH_KEYS = ("version", "checkpoint", "options", "jobs")
JOB_KEYS = ("id", "video", "audio", "output", "options", "start", "end", "audio_start", "face_ranges", "dub_ranges")
PARTIAL_MARK = ".lipsync-partial"  # in the temporary name of an output being written


class BatchError(LipsyncError):
    """JOBS.json is malformed or has a bad value: nothing runs (exit 2)."""


@dataclass
class Job:
    """One output to make. Paths are absolute; start/end/audio_start are seconds (None: not given)."""

    id: str
    video: str
    audio: str
    output: str
    options: object  # SyncOptions
    start: float | None = None
    end: float | None = None
    audio_start: float | None = None
    # a cut as the Blender extension plans it (seconds of the video): "auto" | "all" | [(start, end, face)]
    face_ranges: object = None
    dub_ranges: list | None = None  # [(start, end)]: where the dub plays; the mouth is redone only there

    @property
    def ranged(self) -> bool:
        return self.start is not None or self.end is not None or self.audio_start is not None or self.cut

    @property
    def cut(self) -> bool:
        """Run as one cut of an edit (sync.sync_edit's clip), not as one face range (sync_clips)."""
        return self.face_ranges is not None or self.dub_ranges is not None


@dataclass
class Batch:
    path: str
    checkpoint: str
    jobs: list[Job]


@dataclass
class Prepared:
    """A job ready to run anywhere (plain data, sent to Ray tasks as is)."""

    job: Job
    checkpoint: str
    made_from: dict
    key: str
    clip: dict | None = None  # ranged jobs: {"start_frame", "end_frame", "audio_start"} for sync_clips
    fps: float = 0.0  # the video's frame rate (ranged jobs)


@dataclass
class Result:
    id: str
    status: str  # done | skipped | failed
    message: str = ""
    output: str = ""
    frames: int = 0
    seconds: float = 0.0
    device: str = ""
    node: str = ""

    def to_json(self) -> dict:
        return {"id": self.id, "status": self.status, "message": self.message, "output": self.output,
                "frames": self.frames, "seconds": round(self.seconds, 3), "device": self.device, "node": self.node}


# ------------------------------------------------------------------------------------------ JOBS.json


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message):
        raise BatchError(message)


def _option_parser() -> argparse.ArgumentParser:
    from .options import add_sync_options
    from .sync import SyncOptions

    p = _RaisingParser(prog="JOBS.json options", add_help=False)
    add_sync_options(p, SyncOptions())
    return p


def option_names() -> list[str]:
    """The keys an "options" object may hold: the sync command's options, e.g. "x264_preset", "no_smooth"."""
    return sorted(vars(_option_parser().parse_args([])))


def _option_argv(key: str, value, defaults: dict, where: str) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if defaults[key] is False:  # an on/off switch such as no_smooth
        if not isinstance(value, bool):
            raise BatchError(f'{where}: option "{key}" must be true or false, not {json.dumps(value)}')
        return [flag] if value else []
    if value is None:
        return []
    if isinstance(value, bool) or isinstance(value, dict):
        raise BatchError(f'{where}: option "{key}" cannot be {json.dumps(value)}')
    if isinstance(value, list):
        return [flag, *(str(v) for v in value)]
    return [f"{flag}={value}"]


def parse_options(raw: dict, where: str):
    """JSON options (the sync CLI's names) -> SyncOptions, checked by the CLI's own parser."""
    from .options import options_from_args

    if not isinstance(raw, dict):
        raise BatchError(f'{where}: "options" must be an object like {{"crf": 18}}')
    parser = _option_parser()
    defaults = vars(parser.parse_args([]))
    argv: list[str] = []
    for key, value in raw.items():
        if key not in defaults:
            raise BatchError(f'{where}: unknown option "{key}"; options are: {", ".join(sorted(defaults))}')
        part = _option_argv(key, value, defaults, where)
        try:
            parser.parse_args(part)
        except BatchError as exc:
            raise BatchError(f'{where}: option "{key}": {exc}') from None
        argv += part
    args = parser.parse_args(argv)
    args.command = "sync"
    return options_from_args(args)


def _number(job: dict, key: str, where: str) -> float | None:
    value = job.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BatchError(f'{where}: "{key}" must be a number of seconds, not {json.dumps(value)}')
    return float(value)


def _seconds_pair(value, what: str, where: str) -> tuple[float, float]:
    ok = (isinstance(value, list | tuple) and len(value) == 2
          and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    if not ok or not 0 <= value[0] < value[1]:
        raise BatchError(f"{where}: {what} must be two numbers of seconds, start before end, not {json.dumps(value)}")
    return float(value[0]), float(value[1])


def _face_ranges(value, where: str):
    """"auto" | "all" | [{"start", "end", "face": true|false|null}] -> "auto" | "all" | [(start, end, face)]."""
    if value in ("auto", "all"):
        return value
    example = '"auto", "all" or a list like [{"start": 0.4, "end": 1.2, "face": true}]'
    if not isinstance(value, list) or not value:
        raise BatchError(f'{where}: "face_ranges" must be {example}, not {json.dumps(value)}')
    out = []
    for row in value:
        if not isinstance(row, dict) or set(row) - {"start", "end", "face"} or "face" not in row:
            raise BatchError(f'{where}: each of "face_ranges" must be {{"start", "end", "face"}}, not '
                             f"{json.dumps(row)}")
        if row["face"] not in (True, False, None):
            raise BatchError(f'{where}: "face" in "face_ranges" must be true, false or null, not '
                             f"{json.dumps(row['face'])}")
        out.append((*_seconds_pair([row.get("start"), row.get("end")], '"face_ranges" start/end', where),
                    row["face"]))
    return out


def _dub_ranges(value, where: str) -> list[tuple[float, float]]:
    if not isinstance(value, list) or not value:
        raise BatchError(f'{where}: "dub_ranges" must be a list like [[0.4, 1.2]] (seconds of the video), not '
                         f"{json.dumps(value)}")
    return [_seconds_pair(v, 'each of "dub_ranges"', where) for v in value]


def _path(value, key: str, where: str, folder: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BatchError(f'{where}: "{key}" must be a path (text), not {json.dumps(value)}')
    return os.path.normpath(os.path.join(folder, os.path.expanduser(value)))


def load_batch(path: str | os.PathLike) -> Batch:
    """Read and check JOBS.json; BatchError (nothing runs) names the job and key at fault."""
    path = os.path.abspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise BatchError(f"{path} does not exist: give the path of a JOBS.json file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BatchError(f"{path} is not valid JSON: {exc}") from None
    return check_batch(data, path)


def check_batch(data, path: str | os.PathLike) -> Batch:
    """Check a JOBS.json document as if it were read from `path` (relative paths resolve against its folder)."""
    path = os.path.abspath(path)
    name = os.path.basename(path)
    if not isinstance(data, dict):
        raise BatchError(f'{name} must hold one object: {{"version": 1, "checkpoint": ..., "jobs": [...]}}')
    unknown = [k for k in data if k not in BATCH_KEYS]
    if unknown:
        raise BatchError(f'{name}: unknown key "{unknown[0]}"; the keys are: {", ".join(BATCH_KEYS)}')
    if data.get("version") != JOBS_VERSION:
        raise BatchError(f'{name}: "version" must be {JOBS_VERSION} (this engine reads version {JOBS_VERSION}), '
                         f"not {json.dumps(data.get('version'))}")
    folder = os.path.dirname(path)
    checkpoint = _path(data.get("checkpoint"), "checkpoint", name, folder)
    base = data.get("options") or {}
    parse_options(base, f"{name}, batch-wide options")
    jobs_raw = data.get("jobs")
    if not isinstance(jobs_raw, list) or not jobs_raw:
        raise BatchError(f'{name}: "jobs" must be a non-empty list of jobs')
    jobs: list[Job] = []
    ids: set[str] = set()
    outputs: dict[str, str] = {}
    for i, raw in enumerate(jobs_raw):
        where = f"{name}, job {i + 1}"
        if not isinstance(raw, dict):
            raise BatchError(f"{where}: a job must be an object with id, video, audio and output")
        jid = raw.get("id")
        if not isinstance(jid, str) or not jid.strip():
            raise BatchError(f'{where}: "id" must be a non-empty text')
        where = f'{name}, job "{jid}"'
        if jid in ids:
            raise BatchError(f"{where}: the id is used by another job: give every job its own id")
        ids.add(jid)
        unknown = [k for k in raw if k not in JOB_KEYS]
        if unknown:
            raise BatchError(f'{where}: unknown key "{unknown[0]}"; a job\'s keys are: {", ".join(JOB_KEYS)}')
        for key in ("video", "audio", "output"):
            if key not in raw:
                raise BatchError(f'{where}: "{key}" is missing')
        video, audio, output = (_path(raw[k], k, where, folder) for k in ("video", "audio", "output"))
        own = raw.get("options") or {}
        if not isinstance(own, dict):
            raise BatchError(f'{where}: "options" must be an object like {{"crf": 18}}')
        opts = parse_options({**base, **own}, where)
        start, end, audio_start = (_number(raw, k, where) for k in ("start", "end", "audio_start"))
        face_ranges = _face_ranges(raw["face_ranges"], where) if raw.get("face_ranges") is not None else None
        dub_ranges = _dub_ranges(raw["dub_ranges"], where) if raw.get("dub_ranges") is not None else None
        job = Job(jid, video, audio, output, opts, start, end, audio_start, face_ranges, dub_ranges)
        if start is not None and start < 0:
            raise BatchError(f'{where}: "start" must be 0 or more seconds, not {start:g}')
        if end is not None and end <= (start or 0.0):
            raise BatchError(f'{where}: "end" ({end:g} s) must come after "start" ({start or 0.0:g} s)')
        if job.ranged:
            if opts.match != "video":
                raise BatchError(f'{where}: option "match" "audio" cannot be used with start/end/audio_start: '
                                 "remove the range, or use match video")
            seg = opts.segments.strip().lower() if isinstance(opts.segments, str) else ""
            if seg not in ("auto", "all") and job.face_ranges is None:
                raise BatchError(f'{where}: option "segments" ranges apply to whole-video jobs; a job with '
                                 "start/end is one face range: make one job per face range instead")
        if output in (video, audio, checkpoint):
            raise BatchError(f'{where}: "output" {output} would overwrite an input: choose another file name')
        if output in outputs:
            raise BatchError(f'{where}: "output" {output} is also the output of job "{outputs[output]}"')
        outputs[output] = jid
        jobs.append(job)
    return Batch(path, checkpoint, jobs)


# ------------------------------------------------------------------------------------ prepare and run


def prepare(job: Job, checkpoint: str) -> Prepared:
    """Probe the inputs and compute the job's content key; LipsyncError when an input is missing or bad."""
    from .media import probe

    for what, p in (("video", job.video), ("audio", job.audio), ("checkpoint", checkpoint)):
        if not os.path.isfile(p):
            raise LipsyncError(f"the {what} {p} does not exist: fix the path in JOBS.json (relative paths are "
                               "relative to its folder)")
    info = probe(job.video)
    clip = None
    if job.ranged:
        s = 0 if job.start is None else int(round(job.start * info.fps))
        e = info.frames if job.end is None else int(round(job.end * info.fps))
        if not 0 <= s < e <= info.frames:
            raise LipsyncError(f"the range {job.start or 0:g}-{job.end if job.end is not None else 'end'} s is "
                               f"outside the video ({info.frames / info.fps:.3f} s): fix start/end")
        a0 = job.audio_start if job.audio_start is not None else s / info.fps
        clip = {"start_frame": s, "end_frame": e, "audio_start": a0}
        made_from = provenance.made_from(job.video, (s, e), job.audio, a0, (e - s) / info.fps, checkpoint,
                                         job.options)
        if job.cut:
            clip.update(cut_clip(job, info.fps, s, e))
            made_from["cut"] = {"segments": clip["segments"], "sync_ranges": clip["sync_ranges"]}
    else:
        seconds = None if job.options.match == "audio" else info.frames / info.fps
        made_from = provenance.made_from(job.video, None, job.audio, 0.0, seconds, checkpoint, job.options)
    return Prepared(job, checkpoint, made_from, provenance.make_key(made_from), clip, info.fps)


def cut_clip(job: Job, fps: float, start: int, end: int) -> dict:
    """A cut job's segments and dub ranges in source frames (rounded as start/end are), for sync_edit."""
    frame = lambda t: int(round(t * fps))  # noqa: E731
    if job.face_ranges is None:
        seg = job.options.segments if isinstance(job.options.segments, str) else "auto"
        segments = seg.strip().lower()
    elif isinstance(job.face_ranges, str):
        segments = job.face_ranges
    else:
        segments = [{"start_frame": frame(a), "end_frame": frame(b), "face": f} for a, b, f in job.face_ranges]
    dub = [[frame(a), frame(b)] for a, b in job.dub_ranges] if job.dub_ranges is not None else [[start, end]]
    return {"segments": segments, "sync_ranges": dub}


class RendererCache:
    """The loaded model, kept for the next job with the same checkpoint and engine options (one at a time:
    a GPU holds one model)."""

    def __init__(self) -> None:
        self._key = None
        self._renderer = None

    @staticmethod
    def settings(opts) -> tuple:
        """What ClipRenderer() reads from the options (render() reads only the encoder's crf/preset from .opts)."""
        from .media.encoder import is_lossless

        # a lossless result runs exact fp32, so it needs a renderer of its own
        return (opts.device, opts.blend, opts.batch_size or 0, is_lossless(opts.codec, opts.crf))

    def get(self, checkpoint: str, opts, progress: Progress):
        from .sync import ClipRenderer

        st = os.stat(checkpoint)
        key = (os.path.realpath(checkpoint), st.st_size, st.st_mtime_ns, *self.settings(opts))
        if key != self._key:
            self._renderer = self._key = None  # free the old model before loading another
            self._renderer = ClipRenderer(checkpoint, opts, progress)
            self._key = key
        self._renderer.opts = opts
        self._renderer.progress = progress
        return self._renderer


def _remove(path) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def clean_partials(output: str) -> None:
    """Remove what killed or failed attempts left beside `output` (their temporary names, never the output)."""
    folder, name = os.path.split(output)
    name = glob.escape(name)
    record = f".{name}{provenance.RECORD_SUFFIX}.*.tmp"
    for pattern in (f".{name}.*{PARTIAL_MARK}*", f"..{name}.*{PARTIAL_MARK}*", record):
        for p in glob.glob(os.path.join(glob.escape(folder), pattern)):
            _remove(p)


def run_prepared(p: Prepared, renderers: RendererCache, progress: Progress | None = None,
                 cancel: CancelToken | None = None, node: str = "local") -> Result:
    """Run one prepared job: output written atomically, then its record. LipsyncError -> a failed Result."""
    from . import sync

    job = p.job
    progress = progress or Progress()
    t0 = time.perf_counter()
    out = job.output
    tmp = ""
    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        provenance.remove_record(out)  # an old record must not vouch for an output being replaced
        clean_partials(out)
        # unique per attempt: a retry never meets the files of a killed attempt still being finished by ffmpeg
        ext = os.path.splitext(out)[1]
        tmp = os.path.join(os.path.dirname(out),
                           f".{os.path.basename(out)}.{uuid.uuid4().hex[:12]}{PARTIAL_MARK}{ext or '.mp4'}")
        renderer = renderers.get(p.checkpoint, job.options, progress)
        extra = {}
        if p.clip is None:
            r = sync.sync(job.video, job.audio, tmp, p.checkpoint, job.options, progress, cancel, renderer=renderer)
            frames = r["frames"]
        elif job.cut:
            row = _run_cut(p, tmp, renderer, progress, cancel)
            frames = row["frames"]
            # what the Blender extension's import needs to place the result (no paths: the folder may move)
            extra["clip"] = {k: v for k, v in row.items() if k not in ("output", "video")}
        else:
            clip = dict(p.clip, output=tmp, face=True)
            r = sync.sync_clips(job.video, job.audio, p.checkpoint, [clip], job.options, progress, cancel,
                                renderer=renderer)
            frames = r["clips"][0]["frames"]
        os.replace(tmp, out)
        seconds = time.perf_counter() - t0
        device = str(renderer.device)
        provenance.write_record(out, p.made_from, job=job.id, frames=frames, device=device, node=node,
                                seconds=round(seconds, 3), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra)
        return Result(job.id, "done", "", out, frames, seconds, device, node)
    except LipsyncError as exc:
        return Result(job.id, "failed", str(exc), out, 0, time.perf_counter() - t0, "", node)
    except Cancelled:
        raise  # the whole batch stops (its report says which jobs did not run)
    except Exception as exc:  # a bug or a library's crash fails this job, not the batch
        return Result(job.id, "failed", f"the engine failed: {exc.__class__.__name__}: {exc}", out, 0,
                      time.perf_counter() - t0, "", node)
    finally:
        if tmp:
            _remove(tmp)
            clean_partials(out)


def _run_cut(p: Prepared, output: str, renderer, progress: Progress, cancel: CancelToken | None) -> dict:
    """A cut job through the edit's own code path (sync.sync_edit), so it equals the extension's local press:
    its audio file is the cut's whole dub, its face choice the clip's (the press sends the options' defaults
    and each clip's choice)."""
    import dataclasses

    from . import sync

    job, c = p.job, p.clip
    o = job.options
    s, e = c["start_frame"], c["end_frame"]
    a0 = float(c["audio_start"])
    lead = max(-a0, 0.0)  # an audio start before 0 s: silence first
    clip = {"video": job.video, "start_frame": s, "end_frame": e, "output": output, "segments": c["segments"],
            "sync_ranges": c["sync_ranges"],
            "dub": [{"file": job.audio, "from": max(a0, 0.0), "at": lead, "seconds": (e - s) / p.fps - lead,
                     "volume": 1.0}] if lead < (e - s) / p.fps else [],
            "face_choice": {"point": list(o.face_at)} if o.face_at is not None else o.face}
    base = dataclasses.replace(o, face=sync.SyncOptions.face, face_at=None)
    return sync.sync_edit(p.checkpoint, [clip], base, progress, cancel, renderer=renderer)["clips"][0]


# ----------------------------------------------------------------------------------------- progress


class BatchProgress:
    """One bar for the whole batch (jobs done, frames per second over every machine), or JSON lines."""

    def __init__(self, total: int, json_lines: bool) -> None:
        self.total, self.done, self.frames = total, 0, 0
        self.failed = 0
        self.results: list[Result] = []  # every finished job, so far (the report of a cancelled batch)
        self.t0 = time.perf_counter()
        self._json = JsonProgress() if json_lines else None
        self._bar = None
        if not json_lines:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="batch", unit="job", file=sys.stderr)

    def log(self, message: str) -> None:
        if self._json:
            self._json.emit({"event": "log", "message": message})
        else:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    def job_progress(self, job_id: str) -> Progress:
        """What a job running in this process reports to: its log lines, prefixed with the job's id."""
        outer = self

        class _JobLog(Progress):
            def log(self, message):
                outer.log(f"[{job_id}] {message}")

        return _JobLog()

    def finished(self, r: Result) -> None:
        self.results.append(r)
        self.done += 1
        self.frames += r.frames if r.status == "done" else 0
        self.failed += r.status == "failed"
        fps = self.frames / max(time.perf_counter() - self.t0, 1e-6)
        if self._json:
            self._json.emit({"event": "job", **r.to_json()})
            self._json.emit({"event": "progress", "stage": "batch", "done": self.done, "total": self.total,
                             "frames": self.frames, "fps": round(fps, 2)})
        else:
            if r.status == "failed":
                self.log(f"failed {r.id}: {r.message}")
            self._bar.set_postfix_str(f"{fps:.1f} frames/s, {self.failed} failed", refresh=False)
            self._bar.update(1)

    def close(self, summary: dict) -> None:
        if self._json:
            self._json.emit({"event": "result", **summary})
        elif self._bar is not None:
            self._bar.close()


# -------------------------------------------------------------------------------------------- the run


def write_report(path: str, batch: Batch, results: list[Result], seconds: float, ray_address: str | None) -> None:
    by_id = {r.id: r for r in results}
    jobs = [by_id[j.id].to_json() if j.id in by_id else Result(j.id, "failed", "not run (cancelled)").to_json()
            for j in batch.jobs]
    report = {"version": REPORT_VERSION, "jobs_file": batch.path, "ray": ray_address, "seconds": round(seconds, 3),
              "summary": summarize(jobs), "jobs": jobs}
    provenance.write_json_atomic(path, report)


def summarize(jobs: list[dict]) -> dict:
    return {s: sum(1 for j in jobs if j["status"] == s) for s in ("done", "skipped", "failed")}


def run_batch(batch: Batch, remote=None, progress: BatchProgress | None = None,
              cancel: CancelToken | None = None) -> list[Result]:
    """Prepare every job (skip the current ones), then run the rest here or, given `remote(todo, log, cancel)`
    (an iterator of Results in any order, e.g. farm.run_on_ray), there. Results in job order."""
    progress = progress or BatchProgress(len(batch.jobs), json_lines=True)
    cancel = cancel or CancelToken()
    results: dict[str, Result] = {}
    todo: list[Prepared] = []

    def prep(job: Job):
        try:
            return prepare(job, batch.checkpoint)
        except LipsyncError as exc:
            return Result(job.id, "failed", str(exc), job.output)
        except OSError as exc:  # unreadable input, a share gone away: this job fails, the others go on
            return Result(job.id, "failed", f"cannot read the job's inputs: {exc}", job.output)

    # hashing and probing wait on disks and ffmpeg, not on this process: a few at once
    with ThreadPoolExecutor(max_workers=8) as pool:
        for job, p in zip(batch.jobs, pool.map(prep, batch.jobs)):
            if isinstance(p, Result):
                results[job.id] = p
                progress.finished(p)
            elif provenance.is_current(job.output, p.key):
                clean_partials(job.output)
                rec = provenance.read_record(job.output) or {}
                r = Result(job.id, "skipped", "the output is current (made from the same inputs and options)",
                           job.output, int(rec.get("frames") or 0), 0.0, str(rec.get("device") or ""),
                           str(rec.get("node") or ""))
                results[job.id] = r
                progress.finished(r)
            else:
                todo.append(p)
    if todo and remote is not None:
        for r in remote(todo, progress.log, cancel):
            results[r.id] = r
            progress.finished(r)
    elif todo:
        renderers = RendererCache()
        # jobs that need the same loaded engine run together: one model load per engine setting
        for p in sorted(todo, key=lambda p: (p.checkpoint, RendererCache.settings(p.job.options))):
            cancel.check()
            r = run_prepared(p, renderers, progress.job_progress(p.job.id), cancel)
            results[r.id] = r
            progress.finished(r)
    return [results[j.id] for j in batch.jobs if j.id in results]
