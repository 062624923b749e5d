"""docs/CONTRACTS.md is the map others read first: every module it lists exists and has every public name it
names, and every engine module is on the map."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / "docs" / "CONTRACTS.md"


def _engine_rows() -> list[tuple[str, str]]:
    """(module file as written, public API cell) for every row of the lipsync_core table."""
    text = CONTRACTS.read_text(encoding="utf-8")
    section = text.split("## lipsync_core", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].replace("\\", "").endswith(".py"):
            rows.append((cells[0].replace("\\", ""), cells[2]))
    return rows


def _modules(cell: str) -> list[str]:
    """"faces/detectors.py" -> lipsync_core.faces.detectors; "cli.py / __main__.py" -> both."""
    names = []
    for part in cell.split("/ "):
        part = part.strip().removesuffix(".py")
        dotted = "lipsync_core." + part.replace("/", ".")
        names.append(dotted.removesuffix(".__init__"))
    return names


def _names(api: str) -> list[tuple[str, ...]]:
    """Attribute paths named in a public API cell: `probe(path) -> VideoInfo` -> ("probe",),
    `Detector.detect(frames)` -> ("Detector", "detect"), `FaceGenerator(...).predict(...)` -> (..., "predict")."""
    found = []
    for span in re.findall(r"`([^`]+)`", api):
        if span.startswith("python "):
            continue
        m = re.match(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(\([^)]*\))?(?:\.([A-Za-z_]\w*))?", span)
        if not m:
            continue
        path = tuple(m.group(1).split("."))
        if m.group(3):
            path += (m.group(3),)
        found.append(path)
    return found


ROWS = _engine_rows()


def test_the_contract_lists_modules():
    assert len(ROWS) > 15, ROWS


@pytest.mark.parametrize("module_cell,api", ROWS, ids=[r[0] for r in ROWS])
def test_every_listed_name_exists(module_cell, api):
    modules = [importlib.import_module(m) for m in _modules(module_cell)]
    missing = []
    for path in _names(api):
        for module in modules:
            obj = module
            for attr in path:
                obj = getattr(obj, attr, None)
                if obj is None:
                    break
            if obj is not None:
                break
        else:
            missing.append(".".join(path))
    assert not missing, f"docs/CONTRACTS.md names {missing} in {module_cell}, which does not have them"


def test_every_engine_module_is_on_the_map():
    listed = {m for cell, _ in ROWS for m in _modules(cell)}
    package = ROOT / "lipsync_core"
    on_disk = {"lipsync_core." + ".".join(p.relative_to(package).with_suffix("").parts)
               for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    on_disk = {m.removesuffix(".__init__") for m in on_disk} - {"lipsync_core", "lipsync_core.faces"}
    assert on_disk <= listed, f"not in docs/CONTRACTS.md: {sorted(on_disk - listed)}"
