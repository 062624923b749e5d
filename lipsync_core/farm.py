"""A batch on a Ray cluster: one Ray task per job, placed by Ray where the asked GPUs/CPUs are free.

Ray is imported here only (`batch --ray`); the local engine and the Blender add-on never need it.
The engine runs inside the Ray worker process (no child engine process that could outlive a killed worker),
and each worker keeps its loaded model for the next job it gets. Ray re-runs a task whose worker process or
machine died (`max_retries`); a job that fails on its input returns a failed result instead of raising, so it
is reported once and never retried. Outputs are written atomically under a name unique to the attempt
(batch.run_prepared), so a retry never trips over what a killed attempt left.
"""

from __future__ import annotations

from typing import Callable, Iterator

from .errors import LipsyncError
from .progress import CancelToken

TASK_NAME = "lipsync_job"  # the worker's process title while it runs a job: "ray::lipsync_job"
_renderers = None  # this worker process's RendererCache


def import_ray():
    try:
        import ray
    except ImportError:
        raise LipsyncError('--ray needs Ray: pip install "ray[default]" (or pip install ".[farm]" in this '
                           "checkout), the same Ray version as the cluster's") from None
    return ray


def lipsync_job(prepared):
    """Runs in a Ray worker: one job, with this worker's cached model. Never raises for a job's own failure."""
    global _renderers
    import ray

    from .batch import RendererCache, run_prepared

    if _renderers is None:
        _renderers = RendererCache()
    return run_prepared(prepared, _renderers, node=ray.get_runtime_context().get_node_id())


def run_on_ray(todo: list, address: str, gpus_per_job: float | None, cpus_per_job: float, retries: int,
               log: Callable[[str], None], cancel: CancelToken) -> Iterator:
    """Submit every prepared job as a task; yield batch.Result as they finish (any order)."""
    from .batch import Result

    ray = import_ray()
    try:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LipsyncError(f"cannot reach the Ray cluster at {address!r}: {exc}. Start it with `ray start --head` "
                           "(and `ray start --address=HEAD:PORT` on each worker machine), or give its address "
                           "with --ray HOST:PORT / RAY_ADDRESS") from None
    try:
        resources = ray.cluster_resources()
        if gpus_per_job is None:
            gpus_per_job = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        for what, need in (("GPU", gpus_per_job), ("CPU", cpus_per_job)):
            have = max((n["Resources"].get(what, 0) for n in ray.nodes() if n.get("Alive")), default=0)
            if need > have:
                raise LipsyncError(f"each job asks for {need:g} {what} but no machine of the cluster has that many "
                                   f"(largest: {have:g}): lower --{what.lower()}s-per-job")
        log(f"Ray cluster: {len([n for n in ray.nodes() if n.get('Alive')])} machines, "
            f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; each job asks for "
            f"{gpus_per_job:g} GPU, {cpus_per_job:g} CPU")
        task = ray.remote(lipsync_job).options(name=TASK_NAME, num_gpus=gpus_per_job, num_cpus=cpus_per_job,
                                               max_retries=retries, retry_exceptions=False)
        pending = {task.remote(p): p for p in todo}
        try:
            while pending:
                cancel.check()
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for ref in done:
                    p = pending.pop(ref)
                    try:
                        yield ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # raised on the worker before our code ran
                        yield Result(p.job.id, "failed", "the job could not start on its Ray worker (is the engine "
                                     f"installed on every machine?): {_last_line(exc)}", p.job.output)
                    except ray.exceptions.RayError as exc:  # the worker or its machine died more than `retries`
                        yield Result(p.job.id, "failed", f"the job's Ray worker died {retries + 1} times "
                                     f"(out of memory, or a machine lost?): {_last_line(exc)}", p.job.output)
        finally:  # cancelled or interrupted: stop what still runs (the next run cleans what it leaves)
            for ref in pending:
                ray.cancel(ref, force=True)
    finally:
        ray.shutdown()


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else exc.__class__.__name__
