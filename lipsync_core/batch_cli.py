"""The `batch` subcommand: parse its arguments, run a JOBS.json here (batch.py) or on Ray (farm.py), report.

Kept apart from batch.py so that farm.py (which runs batch jobs inside Ray workers) and batch.py never import
each other.
"""

from __future__ import annotations

import os
import sys
import time

from .batch import BatchError, BatchProgress, load_batch, run_batch, summarize, write_report
from .errors import Cancelled, LipsyncError
from .farm import run_on_ray
from .progress import CancelToken, JsonProgress

# ------------------------------------------------------------------------------------------------ CLI


def add_subparser(sub) -> None:
    b = sub.add_parser("batch", help="run the jobs of a JOBS.json file (here, or on a Ray cluster with --ray)",
                       description="Run the lip-sync jobs of JOBS.json; outputs that are current are skipped. "
                                   "Exit 0: every job done or skipped, 1: some failed, 2: bad JOBS.json.")
    b.add_argument("jobs", metavar="JOBS.json", help="the batch file (format: README, 'Batch / farm')")
    b.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run each job as a task on this Ray cluster (auto: $RAY_ADDRESS or the local one); "
                        'needs pip install "ray[default]"')
    b.add_argument("--gpus-per-job", type=float, default=None, metavar="G",
                   help="GPUs each Ray task asks for (fractions share a GPU; default 1 when the cluster has GPUs, "
                        "else 0)")
    b.add_argument("--cpus-per-job", type=float, default=1.0, metavar="C",
                   help="CPUs each Ray task asks for (default %(default)s)")
    b.add_argument("--retries", type=int, default=3, metavar="N",
                   help="times Ray runs a job again when its worker process or machine dies (default %(default)s; "
                        "jobs failing on bad input are never retried)")
    b.add_argument("--report", metavar="REPORT.json", help="write the per-job report here")
    b.add_argument("--json-progress", action="store_true", help="progress and results as JSON lines")
    b.set_defaults(func=run_cli)


def run_cli(args) -> int:
    try:
        return _run_cli(args)
    except LipsyncError as exc:
        if args.json_progress:  # tools read stdout only
            JsonProgress().emit({"event": "error", "message": str(exc)})
        raise


def _run_cli(args) -> int:
    import signal

    t0 = time.perf_counter()
    batch = load_batch(args.jobs)  # BatchError: exit 2, nothing run
    if args.retries < 0 or args.cpus_per_job < 0 or (args.gpus_per_job or 0) < 0:
        raise BatchError("--retries, --cpus-per-job and --gpus-per-job must be 0 or more")
    if args.report and not os.path.isdir(os.path.dirname(os.path.abspath(args.report))):
        raise BatchError(f"the folder of --report {args.report} does not exist: create it or choose another path")
    progress = BatchProgress(len(batch.jobs), args.json_progress)
    cancel = CancelToken()
    signal.signal(signal.SIGTERM, lambda *_: cancel.cancel())
    code = 0
    try:
        remote = None
        if args.ray:
            def remote(todo, log, cancel_):
                return run_on_ray(todo, args.ray, args.gpus_per_job, args.cpus_per_job, args.retries, log, cancel_)

        run_batch(batch, remote, progress, cancel)
    except (Cancelled, KeyboardInterrupt):
        code = 130
    results = progress.results
    seconds = time.perf_counter() - t0
    summary = summarize([r.to_json() for r in results])
    if args.report:
        write_report(args.report, batch, results, seconds, args.ray)
    if code == 0:
        code = 1 if summary["failed"] or len(results) < len(batch.jobs) else 0
    progress.close({**summary, "jobs": len(batch.jobs), "seconds": round(seconds, 3), "report": args.report,
                    "exit": code})
    if not args.json_progress:
        print(f"batch: {summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed of "
              f"{len(batch.jobs)} jobs in {seconds:.1f} s" + (f"; report: {args.report}" if args.report else "")
              + (" (cancelled)" if code == 130 else ""), file=sys.stderr)
    return code
