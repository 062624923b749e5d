"""Engine set-up (lipsync_core.setup_env) and the extension's Set up Engine / Download Weights buttons.

Offline and quick: venvs get an empty requirement list or a tiny wheel made here (LIPSYNC_SETUP_REQUIREMENTS),
weights come from a local http.server on 127.0.0.1 (LIPSYNC_WEIGHTS_MIRRORS). bpy.app.online_access is
read-only (and False in bpy's module mode): the add-on reads it through weights_ops.online_access(), which these
tests replace.
"""

# ruff: noqa: F811  (pytest fixtures imported from blender_env come back as test arguments)
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from pathlib import Path
from types import SimpleNamespace

import bpy
import pytest
from mirror import serve_wav2lip

import blender_env as be  # first: bpy with a temporary user folder
from blender_env import checkpoint, lipsync_addon  # noqa: F401  (fixtures)
from lipsync_core import setup_env

ROOT = Path(__file__).resolve().parents[1]


def make_wheel(folder: Path, name: str = "lipsync_tiny_test", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel (pip installs it offline): `import lipsync_tiny_test; VALUE == 42`."""
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: lipsync-tests\nRoot-Is-Purelib: true\n"
                                             b"Tag: py3-none-any\n",
    }
    record = f"{name}-{version}.dist-info/RECORD"
    rows = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{path},sha256={digest},{len(data)}")
    rows.append(f"{record},,")
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr(record, "\n".join(rows) + "\n")
    return wheel


def run_setup_cli(venv_dir: Path, requirements: str, *extra: str) -> tuple[int, list[dict]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), LIPSYNC_SETUP_REQUIREMENTS=requirements)
    proc = subprocess.run([sys.executable, "-m", "lipsync_core.setup_env", str(venv_dir), "--json", *extra],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is one JSON object
    return proc.returncode, events


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return make_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def made_venv(tmp_path_factory):
    """A venv made by `python -m lipsync_core.setup_env DIR --json` with no packages: (dir, events)."""
    venv_dir = tmp_path_factory.mktemp("venvs") / "engine"
    rc, events = run_setup_cli(venv_dir, "")
    assert rc == 0, events
    return venv_dir, events


# ---------------------------------------------------------------------------- setup_env itself


def test_requirements_are_pyprojects_and_the_env_overrides_them(monkeypatch):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert setup_env.RUNTIME == project["dependencies"]
    assert setup_env.DEV == project["optional-dependencies"]["dev"]
    monkeypatch.delenv("LIPSYNC_SETUP_REQUIREMENTS", raising=False)
    assert setup_env.requirements() == setup_env.RUNTIME
    assert setup_env.requirements(dev=True) == setup_env.RUNTIME + setup_env.DEV
    monkeypatch.setenv("LIPSYNC_SETUP_REQUIREMENTS", "")
    assert setup_env.requirements(dev=True) == []
    monkeypatch.setenv("LIPSYNC_SETUP_REQUIREMENTS", " tqdm  ./a.whl\nnumpy<2 ")
    assert setup_env.requirements() == ["tqdm", "./a.whl", "numpy<2"]


def test_cli_makes_a_venv_and_speaks_json(made_venv):
    venv_dir, events = made_venv
    assert events[0] == {"event": "log", "message": f"creating {venv_dir}"}
    assert events[-1] == {"event": "result", "python": str(setup_env.venv_python(venv_dir))}
    assert [e["event"] for e in events[:-1]] == ["log"] * (len(events) - 1)
    py = setup_env.venv_python(venv_dir)
    assert subprocess.run([str(py), "-m", "pip", "--version"], capture_output=True, check=False).returncode == 0
    assert (venv_dir / ".lipsync-deps").read_text() == hashlib.sha256(b"").hexdigest()
    # again: the stamp says it is up to date, nothing is made or installed
    t0 = time.monotonic()
    rc, again = run_setup_cli(venv_dir, "")
    assert rc == 0 and again[0] == {"event": "log", "message": f"up to date: {venv_dir}"}
    assert again[-1]["event"] == "result" and time.monotonic() - t0 < 5


def test_ensure_venv_installs_and_restamps_when_the_list_changes(made_venv, wheel):
    venv_dir, _ = made_venv
    py = setup_env.venv_python(venv_dir)
    mtime = py.lstat().st_mtime
    logs: list[str] = []
    assert setup_env.ensure_venv(venv_dir, [str(wheel)], log=logs.append) == py
    assert logs[0] == f"installing: {wheel}" and any(m.startswith("Successfully installed") for m in logs), logs
    out = subprocess.run([str(py), "-c", "import lipsync_tiny_test as t; print(t.VALUE)"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "42"
    assert py.lstat().st_mtime == mtime  # the venv was kept, only the packages changed
    logs.clear()
    setup_env.ensure_venv(venv_dir, [str(wheel)], log=logs.append)
    assert logs == [f"up to date: {venv_dir}"]


def test_pip_failure_is_one_error_event_and_keeps_the_old_stamp(made_venv, tmp_path):
    venv_dir, _ = made_venv
    stamp = (venv_dir / ".lipsync-deps").read_text()
    missing = tmp_path / "missing-1.0-py3-none-any.whl"
    rc, events = run_setup_cli(venv_dir, str(missing))
    assert rc == 1
    assert events[-1]["event"] == "error" and events[-1]["message"].startswith("pip failed:")
    assert "missing-1.0-py3-none-any.whl" in events[-1]["message"]
    assert [e for e in events if e["event"] == "result"] == []
    assert (venv_dir / ".lipsync-deps").read_text() == stamp


# ---------------------------------------------------------------------------- the add-on's Set up Engine


@pytest.fixture
def saved_prefs(lipsync_addon):
    """The preferences as they were, put back after the test (other test modules rely on them)."""
    p = be.prefs()
    before = (p.python_path, p.checkpoint_path, p.device, p.weights_model)
    helper_ops = be.submodule("helper_ops")
    helper_ops.last_message.clear()
    yield p
    p.python_path, p.checkpoint_path, p.device, p.weights_model = before
    assert helper_ops.current is None, "a helper process was left running"


def test_setup_engine_makes_the_venv_and_sets_python(saved_prefs, tmp_path, monkeypatch, wheel):
    helper_ops = be.submodule("helper_ops")
    monkeypatch.setenv("LIPSYNC_SETUP_REQUIREMENTS", str(wheel))
    target = tmp_path / "engine venv"
    assert bpy.app.background  # module mode: the operator runs to the end before it returns
    assert bpy.ops.lipsync.setup_engine(venv_dir=str(target)) == {"FINISHED"}
    py = setup_env.venv_python(target)
    assert saved_prefs.python_path == str(py) and py.is_file()
    assert subprocess.run([str(py), "-c", "import lipsync_tiny_test"], capture_output=True, check=False).returncode == 0
    level, msg = helper_ops.last_message["setup"]
    # a tiny package list has no torch: made and pointed at, but it says torch does not work there
    assert level == "WARNING" and "torch does not work there yet" in msg and "cannot import torch" in msg


def test_setup_engine_reports_torch_when_it_works(saved_prefs, tmp_path, monkeypatch):
    helper_ops, worker_client = be.submodule("helper_ops"), be.submodule("worker_client")
    monkeypatch.setenv("LIPSYNC_SETUP_REQUIREMENTS", "")
    seen = []

    def probe(python, use_cache=True):  # stands in for torch being installed there
        seen.append((python, threading.current_thread() is threading.main_thread()))
        return {"torch": "2.13.0", "cuda": False, "mps": False, "python": "3.11.7"}

    monkeypatch.setattr(worker_client, "check_python", probe)
    assert bpy.ops.lipsync.setup_engine(venv_dir=str(tmp_path / "v")) == {"FINISHED"}
    py = str(setup_env.venv_python(tmp_path / "v"))
    assert seen == [(py, False)]  # torch's slow first import ran on the reader thread, not Blender's
    assert helper_ops.last_message["setup"] == ("INFO", f"Engine ready: torch 2.13.0, CUDA: no; Python set to {py}")
    assert be.submodule("prefs").last_check[py].startswith("torch 2.13.0")


def test_setup_engine_reports_pip_failure_and_keeps_python(saved_prefs, tmp_path, monkeypatch):
    saved_prefs.python_path = sys.executable
    monkeypatch.setenv("LIPSYNC_SETUP_REQUIREMENTS", str(tmp_path / "missing-1.0-py3-none-any.whl"))
    with pytest.raises(RuntimeError, match=r"Engine set-up failed: pip failed:(.|\n)*missing-1.0"):
        bpy.ops.lipsync.setup_engine(venv_dir=str(tmp_path / "v"))
    assert saved_prefs.python_path == sys.executable
    level, msg = be.submodule("helper_ops").last_message["setup"]
    assert level == "ERROR" and "press Set up engine again" in msg
    first = msg.splitlines()[0]  # what Blender's report popup shows: pip's own reason
    assert first.startswith("Engine set-up failed: pip failed: ERROR:") and "missing-1.0" in first, first


def test_setup_engine_default_folder_is_where_the_engine_looks(lipsync_addon):
    setup_ops, prefs, worker_client = be.submodule("setup_ops"), be.submodule("prefs"), be.submodule("worker_client")
    user = Path(bpy.utils.extension_path_user(prefs.PACKAGE))
    assert setup_ops.default_venv_dir() == Path(prefs.user_dir()) / "venv" == user / "venv"
    assert ((worker_client.venv_python(user / "venv"), "the extension's engine venv")
            in worker_client.python_candidates(user))
    assert setup_ops.setup_python() == sys.executable  # module mode: this venv's Python 3.11


def _modal(cls):
    """The registered operator's own invoke/modal code on a stand-in instance (headless: no event loop)."""
    import types

    reports = []
    op = SimpleNamespace(kind=cls.kind, report=lambda level, msg: reports.append((set(level), msg)),
                         venv_dir="", model="PREFERENCES", directory="")
    for name in ("_begin", "modal", "cancel", "_end_modal", "_conclude", "_refuse", "make", "apply", "_request_cancel",
                 "_advance", "_finish"):
        setattr(op, name, types.MethodType(getattr(cls, name), op))
    return op, reports


def _drive(op, on_tick=None, timeout: float = 120.0):
    timer = SimpleNamespace(type="TIMER", value="NOTHING")
    deadline = time.monotonic() + timeout
    while True:
        result = op.modal(bpy.context, timer)
        if result not in ({"PASS_THROUGH"}, {"RUNNING_MODAL"}):
            return result
        if on_tick:
            on_tick()
        assert time.monotonic() < deadline, "the helper did not end"
        time.sleep(0.05)


class _Layout:
    """Records what a draw() call lays out (labels, operators, progress)."""

    def __init__(self, log):
        self.log = log

    def _child(self, *a, **k):
        return _Layout(self.log)

    row = column = box = split = _child

    def prop(self, data, name, **k):
        self.log.append(("prop", name))

    def operator(self, idname, **k):
        self.log.append(("operator", idname))

    def label(self, text="", **k):
        self.log.append(("label", text))

    def progress(self, **k):
        self.log.append(("progress", k.get("text")))

    def prop_search(self, data, name, *a, **k):
        self.log.append(("prop_search", name))

    def separator(self, **k):
        pass


def _draw_prefs() -> list:
    log: list = []
    p = be.prefs()
    type(p).draw(SimpleNamespace(layout=_Layout(log), python_path=p.python_path, checkpoint_path="",
                                 device="AUTO", weights_model=p.weights_model), bpy.context)
    return log


def test_setup_engine_modal_shows_progress_and_finishes(saved_prefs, tmp_path, monkeypatch):
    """The interface path: the timer pumps the helper; the preferences show its stage and a Cancel button."""
    helper_ops = be.submodule("helper_ops")
    monkeypatch.setenv("LIPSYNC_SETUP_REQUIREMENTS", "")
    op, reports = _modal(bpy.types.LIPSYNC_OT_setup_engine)
    op.venv_dir = str(tmp_path / "modal venv")
    assert op._begin(bpy.context) == {"RUNNING_MODAL"}
    assert not bpy.ops.lipsync.setup_engine.poll() and not bpy.ops.lipsync.download_weights.poll()  # one at a time
    assert bpy.ops.lipsync.cancel_helper.poll()
    drawn = []
    result = _drive(op, on_tick=lambda: drawn.append(_draw_prefs()) if not drawn else None)
    assert result == {"FINISHED"}, reports
    assert ("operator", "lipsync.cancel_helper") in drawn[0]
    assert any(e[0] == "label" and e[1].startswith("Engine set-up: ") for e in drawn[0]), drawn[0]
    assert saved_prefs.python_path == str(setup_env.venv_python(tmp_path / "modal venv"))
    assert helper_ops.current is None and bpy.ops.lipsync.setup_engine.poll()
    after = _draw_prefs()  # the outcome stays in the preferences
    assert any(e[0] == "label" and "Python set to" in e[1] for e in after), after
    assert ("operator", "lipsync.setup_engine") in after and ("operator", "lipsync.download_weights") in after


def test_setup_engine_escape_cancels_and_stops_the_process(saved_prefs, tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_SETUP_REQUIREMENTS", "")
    saved_prefs.python_path = sys.executable
    op, reports = _modal(bpy.types.LIPSYNC_OT_setup_engine)
    op.venv_dir = str(tmp_path / "cancelled")
    assert op._begin(bpy.context) == {"RUNNING_MODAL"}
    proc = op._task.proc
    esc = SimpleNamespace(type="ESC", value="PRESS")
    assert op.modal(bpy.context, esc) == {"RUNNING_MODAL"}
    assert _drive(op) == {"CANCELLED"}
    assert proc.wait(timeout=10) is not None
    assert reports[-1][0] == {"WARNING"} and "cancelled" in reports[-1][1]
    assert saved_prefs.python_path == sys.executable


# ---------------------------------------------------------------------------- the add-on's Download Weights


@pytest.fixture
def mirror(tmp_path, checkpoint, monkeypatch):
    """A weights mirror on 127.0.0.1 with a random-weight wav2lip.pth (wav2lip has no recorded size or sha256,
    so the download is checked by structure; the built-in internet mirrors come after this one)."""
    yield from serve_wav2lip(tmp_path, checkpoint, monkeypatch)


@pytest.fixture
def online(monkeypatch, lipsync_addon):
    monkeypatch.setattr(be.submodule("prefs"), "online_access", lambda: True)


def test_download_weights_saves_verifies_and_sets_checkpoint(saved_prefs, mirror, online, tmp_path):
    saved_prefs.python_path = sys.executable  # the engine Python (torch checks the file)
    saved_prefs.checkpoint_path = ""
    saved_prefs.weights_model = "wav2lip"
    dest = tmp_path / "checkpoints"
    assert bpy.ops.lipsync.download_weights(directory=str(dest)) == {"FINISHED"}
    got = dest / "wav2lip.pth"
    assert saved_prefs.checkpoint_path == str(got)
    assert got.read_bytes() == (mirror / "wav2lip.pth").read_bytes() and not list(dest.glob("*.part"))
    level, msg = be.submodule("helper_ops").last_message["weights"]
    assert level == "INFO" and "downloaded and verified" in msg and "non-commercial" in msg


def test_download_weights_default_folder_is_the_extensions(saved_prefs, mirror, online):
    saved_prefs.python_path = sys.executable
    weights_ops = be.submodule("weights_ops")
    dest = weights_ops.default_dir()
    assert dest == Path(be.submodule("prefs").user_dir()) / "checkpoints"
    try:
        assert bpy.ops.lipsync.download_weights(model="wav2lip") == {"FINISHED"}
        assert saved_prefs.checkpoint_path == str(dest / "wav2lip.pth")
    finally:
        (dest / "wav2lip.pth").unlink(missing_ok=True)


def test_download_weights_refused_without_online_access(saved_prefs, monkeypatch, mirror):
    weights_ops = be.submodule("weights_ops")
    assert bpy.app.online_access is False  # bpy as a module: like a fresh Blender with online access not allowed
    assert be.submodule("prefs").online_access() is False  # the real reading, unpatched
    saved_prefs.python_path = sys.executable
    saved_prefs.checkpoint_path = "/keep/this.pth"
    started = []
    monkeypatch.setattr(weights_ops, "DownloadTask", lambda *a, **k: started.append(a))
    with pytest.raises(RuntimeError, match=r"Online access is off(.|\n)*Preferences > System > Network(.|\n)*"
                                           r"weights download wav2lip_gan"):
        bpy.ops.lipsync.download_weights()
    assert started == [] and saved_prefs.checkpoint_path == "/keep/this.pth"
    log = _draw_prefs()
    assert any(e[0] == "label" and e[1].startswith("Online access is off") for e in log), log


def test_download_weights_needs_the_engine_python(saved_prefs, online, tmp_path):
    saved_prefs.python_path = str(tmp_path / "no" / "python")
    with pytest.raises(RuntimeError, match="Set up Engine first"):
        bpy.ops.lipsync.download_weights(model="wav2lip", directory=str(tmp_path))


def test_download_progress_and_failure_text(lipsync_addon, tmp_path):
    """Progress is the growing .part against the recorded size; a failed download says what the CLI said."""
    weights_ops = be.submodule("weights_ops")
    info = {"filename": "wav2lip_gan.pth", "size": 4000, "licence_short": "non-commercial (Wav2Lip)"}
    task = weights_ops.DownloadTask(sys.executable, "wav2lip_gan", tmp_path, info)
    (tmp_path / "wav2lip_gan.pth.part").write_bytes(b"x" * 1000)
    task.poll()
    assert task.fraction == pytest.approx(0.25) and "wav2lip_gan.pth" in task.stage
    # the CLI's own failure output, as `weights download` prints it with no network
    script = ("import sys; print('error: Could not download wav2lip_gan.pth. Tried:', file=sys.stderr); "
              "print('  https://mirror.example/wav2lip_gan.pth: cannot connect (Name or service not known)', "
              "file=sys.stderr); sys.exit(2)")
    task.argv = [sys.executable, "-c", script]
    outcome = task.start().wait(timeout=30)
    assert outcome["status"] == "error"
    assert outcome["message"].startswith("Weights download failed: Could not download wav2lip_gan.pth. Tried:")
    assert "cannot connect" in outcome["message"]


def test_sequencer_panel_points_at_the_set_up_buttons(saved_prefs, monkeypatch):
    prefs = be.submodule("prefs")
    be.new_scene("Hint")

    def labels():
        log: list = []
        bpy.types.LIPSYNC_PT_panel.draw(SimpleNamespace(layout=_Layout(log)), bpy.context)
        return [e[1] for e in log if e[0] == "label"]

    saved_prefs.python_path = ""
    monkeypatch.setattr(prefs, "found_python", lambda: None)
    assert "No engine yet: Preferences > Add-ons > Lip Sync > Set up Engine" in labels()
    saved_prefs.python_path, saved_prefs.checkpoint_path = sys.executable, ""
    assert "No weights yet: Preferences > Add-ons > Lip Sync > Download Weights" in labels()
    saved_prefs.checkpoint_path = "/some/wav2lip_gan.pth"
    assert not [t for t in labels() if t.startswith("No ")]
