"""The steps of one job (check Python, detect, or sync the edit), blocking, on plain data only.

Runs on a job thread in the interface and inline in background mode; never touches bpy. Everything it writes
goes into one fresh job folder, removed again when the job is cancelled or fails.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import edit_plan, worker_client
from .edit_plan import CutPlan, EditSnapshot
from .plan import PlanError


@dataclass
class Outcome:
    status: str  # 'done' | 'error' | 'cancelled'
    message: str = ""
    detected: dict = field(default_factory=dict)  # detect: cut name -> its TimelineSegments
    cuts: list[CutPlan] = field(default_factory=list)  # the edit: every cut's plan
    made: dict = field(default_factory=dict)  # cut name -> the engine's clip result, for the cuts made now
    warning: bool = False  # done, with something the editor should look at (in `message`)


class _Stop(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


class JobSteps:
    """command 'detect' (markers for every cut), 'sync' (the whole edit) or 'export' (a farm batch folder:
    `worker_job` is its export_batch job, `note` the message when it is written), each in one worker."""

    def __init__(self, snap: EditSnapshot, command: str, emit: Callable[[dict], None] | None = None,
                 worker_job: dict | None = None, note: str = "", warning: bool = False) -> None:
        assert command in ("detect", "sync", "export") and (worker_job is not None) == (command == "export")
        self.snap = snap
        self.command = command
        self.worker_job = worker_job
        self.note, self.warning = note, warning
        self.emit = emit or (lambda ev: None)
        self._cancel = threading.Event()
        self._worker: worker_client.WorkerProcess | None = None
        self._lock = threading.Lock()
        self.job_dir: Path | None = None
        self._made_out_dir = False  # the results folder was made by this job (removed again if left empty)

    def cancel(self) -> None:
        with self._lock:
            self._cancel.set()
            if self._worker is not None:
                self._worker.cancel()

    def kill_worker(self) -> None:
        """Kill the running worker outright (tests use it to check a dying engine)."""
        with self._lock:
            if self._worker is not None:
                self._worker.kill()

    @property
    def worker(self) -> worker_client.WorkerProcess | None:
        return self._worker

    def run(self) -> Outcome:
        try:
            out = self._run()
        except _Stop as stop:
            out = stop.outcome
        except (PlanError, worker_client.WorkerError) as exc:
            out = Outcome("error", str(exc))
        except Exception:  # noqa: BLE001  (a bug: its traceback goes into the report, the editor sees it)
            out = Outcome("error", "Lip sync failed unexpectedly:\n" + traceback.format_exc(limit=6))
        except BaseException:  # Ctrl+C in a background run: the worker is gone already, its files go too
            self.discard()
            raise
        if out.status != "done":
            self.discard()
        return out

    def discard(self) -> None:
        """Remove this job's folder and whatever the engine left in it."""
        if self.job_dir is not None and self.job_dir.exists():
            shutil.rmtree(self.job_dir, ignore_errors=True)
            if self._made_out_dir:
                try:
                    self.job_dir.parent.rmdir()  # the results folder, when this job made it and it is still empty
                except OSError:
                    pass

    # -- steps

    def _run(self) -> Outcome:
        if self.command == "export":
            return self._run_export()
        return self._run_edit() if self.command == "sync" else self._run_detect()

    def _run_export(self) -> Outcome:
        """The farm folder: the engine mixes each cut's dub and writes JOBS.json (all or nothing)."""
        worker_client.require_python_file(self.snap.python)
        self._work(self.worker_job)
        return Outcome("done", self.note, warning=self.warning)

    def _run_detect(self) -> Outcome:
        """Face / no-face segments of every cut, in one worker."""
        snap = self.snap
        worker_client.require_python_file(snap.python)
        self._check_cancel()
        result = self._work(edit_plan.detect_job(snap))
        answers = result.get("clips")
        if not isinstance(answers, list) or len(answers) != len(snap.cuts):
            raise PlanError("The engine's answer has no segments for every strip; engine and add-on do not match, "
                            "reinstall the add-on.")
        detected = {c.name: edit_plan.detected_segments(c, a) for c, a in zip(snap.cuts, answers)}
        if not any(s.face for segs in detected.values() for s in segs):
            raise PlanError(edit_plan.no_face_message(list(snap.cuts)))
        return Outcome("done", detected=detected)

    def _run_edit(self) -> Outcome:
        """The whole edit in one worker: only the cuts without a result file for their key are made."""
        snap = self.snap
        self._stage("checking the edit")
        cuts = edit_plan.plan_cuts(snap)
        todo = edit_plan.to_do(cuts)
        made: dict = {}
        if todo:
            worker_client.require_python_file(snap.python)  # the worker itself says when torch is missing
            self._check_cancel()
            made_out_dir = not os.path.isdir(snap.out_dir)
            try:
                os.makedirs(snap.out_dir, exist_ok=True)
                job_dir = Path(tempfile.mkdtemp(prefix=".job-", dir=snap.out_dir))
            except OSError as exc:
                raise PlanError(f"Cannot write the results to {snap.out_dir}: {exc.strerror}. Save the .blend in "
                                "a folder you can write to (results go to its lipsync/ folder).") from exc
            self.job_dir = job_dir  # ours: removed when the job ends, whatever happens
            self._made_out_dir = made_out_dir
            outputs = [str(job_dir / Path(c.output).name) for c in todo]
            result = self._work(edit_plan.edit_job(snap, todo, outputs))
            rows = result.get("clips") or []
            missing = [o for o in outputs if not os.path.isfile(o)]
            if missing or len(rows) != len(todo):
                raise PlanError(f"The engine finished but did not write {missing[0] if missing else 'every cut'}; "
                                "the timeline was not changed.")
            self._check_cancel()
            for c, out, row in zip(todo, outputs, rows):  # a finished result gets its final, keyed name
                with open(out + ".json", "w", encoding="utf-8") as fh:
                    json.dump({"key": c.key, "clip": {**row, "output": c.output}}, fh)
                os.replace(out + ".json", c.output + ".json")
                os.replace(out, c.output)
                made[c.cut] = row
            self.discard()
            self.job_dir = None
        return Outcome("done", cuts=cuts, made=made)

    def _stage(self, text: str) -> None:
        self.emit({"event": "progress", "stage": text, "done": 0, "total": None})

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise _Stop(Outcome("cancelled", "Cancelled; the timeline was not changed."))

    def _work(self, job: dict) -> dict:
        self._check_cancel()
        worker = worker_client.WorkerProcess(self.snap.python, job, self.emit, cache_dir=self.snap.cache_dir)
        with self._lock:
            self._worker = worker
        if self._cancel.is_set():
            worker.cancel()
        try:
            res = worker.run()
        finally:
            with self._lock:
                self._worker = None
        if res.kind == "cancelled" or self._cancel.is_set():
            raise _Stop(Outcome("cancelled", "Cancelled; the timeline was not changed."))
        if res.kind == "error":
            msg = res.event.get("message") or "The engine failed without a message."
            if worker_client.is_import_failure(str(msg), res.stderr_tail):
                msg = worker_client.no_engine_message(self.snap.python, str(msg), res.stderr_tail)
            raise _Stop(Outcome("error", msg))
        return res.event
