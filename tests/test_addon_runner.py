"""The add-on's one process runner (addon/runner.py) on real processes, without Blender."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from addon import worker_client
from addon.runner import Runner, RunnerError, json_event, run_to_end

PY = sys.executable


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap it counts as gone)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_lines_in_order_exit_code_and_merged_stderr():
    script = "import sys; print('{\"event\": \"log\"}'); print('oops', file=sys.stderr, flush=True); print('two'); " \
             "sys.exit(3)"
    r = Runner([PY, "-c", script]).start()
    lines = list(r.lines())
    assert lines[0] == '{"event": "log"}' and set(lines[1:]) == {"oops", "two"}
    assert r.returncode == 3 and json_event(lines[0]) == {"event": "log"} and json_event("two") is None


def test_first_line_and_stderr_kept_apart():
    script = "import sys; job = sys.stdin.readline(); print(job.upper(), end=''); print('log line', file=sys.stderr)"
    r = Runner([PY, "-c", script], first_line="hello", stderr="tail").start()
    assert list(r.lines()) == ["HELLO"] and r.returncode == 0
    assert list(r.stderr_tail) == ["log line"]


def test_drain_does_not_block():
    r = Runner([PY, "-c", "import time; print('a', flush=True); time.sleep(1.0); print('b')"]).start()
    seen, ended, t0 = [], False, time.monotonic()
    while not ended:
        got, ended = r.drain()
        seen += got
        assert time.monotonic() - t0 < 20
        time.sleep(0.02)
    assert seen == ["a", "b"] and r.returncode == 0


def test_cancel_sigterm_then_kill():
    """A process that ignores SIGTERM is killed after kill_after_s; its own children go with it."""
    script = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print(c.pid, flush=True); "
              "time.sleep(60)")
    r = Runner([PY, "-c", script], kill_after_s=0.5).start()
    child = int(next(r.lines()))
    t0 = time.monotonic()
    r.cancel()
    r.wait()
    assert r.cancelled and r.returncode == -9 and time.monotonic() - t0 < 10
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not _alive(child):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the helper's child outlived the cancel")


def test_cancel_line_first_then_sigterm():
    """With a cancel line the process is asked first; it stops by itself, no signal needed."""
    script = ("import sys; sys.stdin.readline(); print('working', flush=True); "
              "line = sys.stdin.readline(); print('got ' + line.strip(), flush=True); sys.exit(130)")
    r = Runner([PY, "-c", script], first_line="{}", cancel_line="cancel", grace_s=30).start()
    it = r.lines()
    assert next(it) == "working"
    r.cancel()
    assert list(it) == ["got cancel"] and r.returncode == 130


def test_cancel_before_start_stops_at_once():
    r = Runner([PY, "-c", "import time; time.sleep(60)"], kill_after_s=0.5)
    r.cancel()
    t0 = time.monotonic()
    r.start().wait()
    assert r.returncode is not None and r.returncode < 0 and time.monotonic() - t0 < 10


def test_on_exit_runs_on_the_reader_thread_with_every_line():
    import threading

    seen = {}

    def on_exit(rc, lines):
        seen["thread"] = threading.current_thread() is threading.main_thread()
        return {"rc": rc, "n": len(lines)}

    r = Runner([PY, "-c", "for i in range(500): print(i)"], on_exit=on_exit, keep=10).start()
    r.wait()
    assert r.exit_result == {"rc": 0, "n": 500} and seen["thread"] is False
    assert list(r.output) == [str(i) for i in range(490, 500)]  # only the tail is kept for messages


def test_run_to_end_and_unstartable():
    assert run_to_end([PY, "-c", "print('x')"], 30) == (0, ["x"])
    rc, _ = run_to_end([PY, "-c", "import time; time.sleep(60)"], 0.5)
    assert rc is not None and rc < 0
    with pytest.raises(RunnerError, match="Could not start '/nowhere/python'"):
        Runner(["/nowhere/python"]).start()


def test_check_python_runs_the_workers_check_command():
    """The Check button's answer comes from `python -m lipsync_core.worker` with {"command": "check"}."""
    info = worker_client.check_python(PY, use_cache=False)
    import torch

    assert info["torch"] == torch.__version__ and info["cuda"] is torch.cuda.is_available()
    assert worker_client.describe(info).startswith(f"torch {torch.__version__}")
    with pytest.raises(worker_client.WorkerError, match="does not exist"):
        worker_client.check_python("/nowhere/python")
