"""Create or refresh the Python environment that runs the engine.

Standard library only: `build.py setup` runs it with any Python 3.11, and the Blender extension's
"Set up engine" button runs it with Blender's Python to make a venv under the extension's user folder.
`python -m lipsync_core.setup_env VENV_DIR [--dev]` prints one JSON line per step when given --json:
`{"event": "log", "message"}` lines, then exactly one `{"event": "result", "python"}` or
`{"event": "error", "message"}` (exit code 1).

LIPSYNC_SETUP_REQUIREMENTS (whitespace-separated pip requirements; may be empty) replaces the package list of
`python -m lipsync_core.setup_env`, e.g. for tests that must run offline and quickly, or to install a local
torch wheel. An empty value makes a venv with pip only.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

# What the engine needs at run time. pyproject.toml lists the same (a test keeps them equal).
RUNTIME = [
    # 2.13.0 installs from a local wheel on the project's machines and is the CUDA build on a user's Linux box.
    "torch==2.13.0",
    # bpy 5.0.1 (tests) and opencv 4.11 need numpy 1.x.
    "numpy<2",
    # 4.11 fits numpy 1.x and still ships the Haar cascades (OpenCV 5 does not).
    "opencv-python>=4.8,<4.12",
    # librosa.load's resampler (the reference decoded audio with librosa.load).
    "soxr>=0.3",
    # S3FD's network definition.
    "face-alignment>=1.4",
    "imageio-ffmpeg",
    "tqdm",
]
# ruff pinned: tests/test_lint.py runs it. librosa and scipy: the tests check the audio against them.
# ray: tests/test_batch.py runs a real two-node cluster (pyproject's "farm" extra is what a farm installs).
DEV = ["pytest", "bpy==5.0.1", "ruff==0.17.6", "scikit-image", "librosa>=0.10", "scipy", "ray==2.60.0"]
REQUIREMENTS_ENV = "LIPSYNC_SETUP_REQUIREMENTS"


def requirements(dev: bool = False) -> list[str]:
    """What `python -m lipsync_core.setup_env` installs: $LIPSYNC_SETUP_REQUIREMENTS when set, else RUNTIME
    (+ DEV)."""
    override = os.environ.get(REQUIREMENTS_ENV)
    if override is not None:
        return override.split()
    return RUNTIME + (DEV if dev else [])


def venv_python(venv_dir: Path) -> Path:
    return Path(venv_dir) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(venv_dir: Path, reqs: list[str], log=print, python: str | None = None) -> Path:
    """Create venv_dir if needed and pip-install reqs; a stamp makes a second call instant.

    `python`: the interpreter that creates the venv (default: this one). Blender's bundled Python may lack
    ensurepip's wheels on some builds; we then create the venv with `python -m venv` as a subprocess.
    """
    venv_dir = Path(venv_dir)
    py = venv_python(venv_dir)
    stamp = venv_dir / ".lipsync-deps"
    want = hashlib.sha256("\n".join(reqs).encode()).hexdigest()
    if py.exists() and stamp.exists() and stamp.read_text().strip() == want:
        log(f"up to date: {venv_dir}")
        return py
    if not py.exists():
        log(f"creating {venv_dir}")
        if python and Path(python).resolve() != Path(sys.executable).resolve():
            subprocess.check_call([python, "-m", "venv", str(venv_dir)])
        else:
            venv.EnvBuilder(with_pip=True).create(venv_dir)
    if not reqs:  # a venv with pip only (LIPSYNC_SETUP_REQUIREMENTS="")
        stamp.write_text(want)
        return py
    log("installing: " + " ".join(reqs))
    proc = subprocess.Popen([str(py), "-m", "pip", "install", "--disable-pip-version-check",
                             "--progress-bar", "off", *reqs], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            tail = (tail + [line])[-20:]
            if line.lstrip().startswith(("Collecting", "Downloading", "Installing", "Successfully", "ERROR")):
                log(line.strip())
    if proc.wait() != 0:
        raise RuntimeError("pip failed:\n" + "\n".join(tail))
    stamp.write_text(want)
    return py


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lipsync_core.setup_env")
    ap.add_argument("venv_dir")
    ap.add_argument("--dev", action="store_true", help="also the test tools (pytest, bpy, ruff)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line (for the Blender add-on)")
    args = ap.parse_args(argv)
    emit = (lambda m: print(json.dumps({"event": "log", "message": m}), flush=True)) if args.json else print
    try:
        py = ensure_venv(Path(args.venv_dir), requirements(args.dev), log=emit)
    except Exception as exc:  # pip's own message is the useful part
        if args.json:
            print(json.dumps({"event": "error", "message": str(exc)}), flush=True)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"event": "result", "python": str(py)}), flush=True)
    else:
        print(f"ready: {py}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
