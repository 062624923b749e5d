"""Build the Blender extension zip with Blender's own builder and validator (bpy's bundled bl_pkg).

    python build.py extension [--output-dir DIR]     (default: dist/)

A staging folder gets addon/'s contents, the root blender_manifest.toml (the source of truth) and a copy of
lipsync_core/, so the worker the add-on starts is always the engine it was built with.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "blender_manifest.toml"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


def stage(dest: Path, root: Path = ROOT) -> Path:
    """Fill dest with what goes into the zip; returns dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in (root / "addon").iterdir():
        if item.name == "__pycache__" or item.name.startswith(".") or item.name == MANIFEST:
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name, ignore=IGNORE)
        else:
            shutil.copy2(item, dest / item.name)
    shutil.copy2(root / MANIFEST, dest / MANIFEST)
    shutil.copytree(root / "lipsync_core", dest / "lipsync_core", ignore=IGNORE)
    return dest


def _bl_pkg():
    import bpy

    scripts = Path(bpy.utils.resource_path("LOCAL")) / "scripts" / "addons_core"
    if str(scripts) not in sys.path:
        sys.path.append(str(scripts))
    import bl_pkg

    return bl_pkg


def build(output_dir: Path, root: Path = ROOT) -> Path:
    """Stage, build and validate; returns the zip path. Raises SystemExit with the builder's code on failure."""
    manifest = tomllib.loads((root / MANIFEST).read_text())
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    zip_path = output_dir / f"{manifest['id']}-{manifest['version']}.zip"
    bl_pkg = _bl_pkg()
    with tempfile.TemporaryDirectory(prefix="lipsync-ext-") as tmp:
        src = stage(Path(tmp) / manifest["id"], root)
        # The builder writes to a hidden temp name and renames, so a failed build leaves no zip behind.
        rc = bl_pkg.cli_extension(["build", "--source-dir", str(src), "--output-filepath", str(zip_path)])
        if rc != 0:
            raise SystemExit(rc)
    rc = bl_pkg.cli_extension(["validate", str(zip_path)])
    if rc != 0:
        zip_path.unlink(missing_ok=True)
        raise SystemExit(rc)
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build.py extension", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist", help="where the zip goes (default: dist/)")
    args = parser.parse_args(argv)
    print(f"built {build(args.output_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
