#!/usr/bin/env python3
"""The project's one entry point.

    python build.py setup        create/refresh .venv with the engine, Blender (bpy) and test tools
    python build.py test [ARGS]  setup, then the whole test suite (ARGS go to pytest)
    python build.py demo         render a lip-synced edit from Blender into out/ (see README)
    python build.py extension [--output-dir DIR]   build the Blender extension zip
    python build.py bench [--quick] [--device cpu|cuda]   speed/memory benchmark, saved as JSON

Runs with any Python 3.11; everything heavy happens inside .venv.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".lipsync-deps"


def venv_python(venv_dir: Path = VENV) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def requirements(extras: tuple[str, ...] = ("dev",)) -> list[str]:
    """Dependencies straight from pyproject.toml, so there is one list to keep."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return reqs


def ensure_venv(venv_dir: Path, reqs: list[str], log=print) -> Path:
    """Create venv_dir (if needed) and pip-install reqs; a stamp makes a second call instant.

    Shared with the Blender extension's "Set up engine" button (it imports this via lipsync_core.setup_env).
    """
    py = venv_python(venv_dir)
    stamp = venv_dir / ".lipsync-deps"
    want = hashlib.sha256("\n".join(reqs).encode()).hexdigest()
    if py.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return py
    if not py.exists():
        log(f"creating {venv_dir}")
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    log("installing: " + " ".join(reqs))
    subprocess.check_call([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", *reqs])
    stamp.write_text(want)
    return py


def cmd_setup(_args: list[str]) -> int:
    ensure_venv(VENV, requirements())
    print(f"ready: {venv_python()}")
    return 0


def run_in_venv(args: list[str]) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.call([str(venv_python()), *args], cwd=ROOT, env=env)


def cmd_test(args: list[str]) -> int:
    cmd_setup([])
    rc = run_in_venv(["-m", "pytest", *args])
    return rc


def cmd_extension(args: list[str]) -> int:
    cmd_setup([])
    return run_in_venv(["-m", "tools.build_extension", *args])


def cmd_demo(args: list[str]) -> int:
    cmd_setup([])
    return run_in_venv(["-m", "tools.demo", *args])


def cmd_bench(args: list[str]) -> int:
    cmd_setup([])
    return run_in_venv(["-m", "tools.bench", *args])


COMMANDS = {
    "setup": cmd_setup,
    "test": cmd_test,
    "demo": cmd_demo,
    "extension": cmd_extension,
    "bench": cmd_bench,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
