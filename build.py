#!/usr/bin/env python3
"""The project's one entry point.

    python build.py setup        create/refresh .venv with the engine, Blender (bpy) and test tools
    python build.py test [ARGS]  setup, then the whole test suite (ARGS go to pytest)
    python build.py demo         render a lip-synced edit from Blender into out/ (see README)
    python build.py extension [--output-dir DIR]   build the Blender extension zip
    python build.py bench [--quick] [--edit] [--device cpu|cuda]   speed/memory benchmark, saved as JSON

Runs with any Python 3.11; everything heavy happens inside .venv.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # lipsync_core.setup_env is standard library only
VENV = ROOT / ".venv"


def requirements(dev: bool = True) -> list[str]:
    from lipsync_core.setup_env import DEV, RUNTIME

    return RUNTIME + (DEV if dev else [])


def venv_python() -> Path:
    from lipsync_core.setup_env import venv_python as vp

    return vp(VENV)


def cmd_setup(_args: list[str]) -> int:
    from lipsync_core.setup_env import ensure_venv

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
