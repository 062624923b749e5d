"""The farm batch folder as plain data (no bpy): path maps, the export's JOBS.json and manifest from the cuts'
plans, and reading the folder back for the import.

A folder holds JOBS.json (read by `python -m lipsync_core batch`, docs/CONTRACTS.md), dub/<job>.wav (each cut's
dub, mixed by the engine), MANIFEST (which strips each job's result belongs to and the content key they had
at export) and, once the farm ran, out/<result> with its record and REPORT.json. Paths inside the folder are
relative, so the folder reads the same on the farm and here; the sources and the checkpoint are absolute,
rewritten by the path map.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .edit_plan import CutPlan, EditSnapshot, engine_options
from .plan import PlanError

MANIFEST = "lipsync_batch.json"
JOBS = "JOBS.json"
REPORT = "REPORT.json"
MANIFEST_VERSION = 1
RECORD_SUFFIX = ".lipsync.json"  # the engine's output record beside each output (provenance.RECORD_SUFFIX)


# -- path maps: "/mnt/projects=/shared/projects; /Volumes/media=/mnt/media"


def parse_path_map(text: str) -> list[tuple[str, str]]:
    """'HERE=FARM' pairs separated by ';' or new lines -> [(here, farm)]; PlanError names a bad one."""
    rules = []
    for part in (text or "").replace("\n", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        here, sep, farm = part.partition("=")
        here, farm = here.strip().rstrip("/\\"), farm.strip().rstrip("/\\")
        if not sep or not here or not farm:
            raise PlanError(f"The path map entry '{part}' is not HERE=FARM (for example /mnt/projects=/shared/projects"
                            "; several separated by ';')")
        rules.append((here, farm))
    return rules


def _under(path: str, folder: str) -> str | None:
    """The rest of `path` below `folder` ('' for the folder itself), or None when it is not inside."""
    if path == folder:
        return ""
    prefix = folder if folder.endswith(("/", "\\")) else folder + os.sep
    alt = folder + "/"
    for p in (prefix, alt):
        if path.startswith(p):
            return path[len(p):]
    return None


def map_path(path: str, rules: list[tuple[str, str]], inverse: bool = False) -> str:
    """The path as the other side sees it: the longest matching prefix replaced (farm -> here when inverse)."""
    best = None
    for here, farm in rules:
        src, dst = (farm, here) if inverse else (here, farm)
        rest = _under(path, src)
        if rest is not None and (best is None or len(src) > len(best[0])):
            best = (src, dst, rest)
    if best is None:
        return path
    _, dst, rest = best
    return f"{dst}/{rest.replace(os.sep, '/')}" if rest else dst


def farm_path(path: str, folder: str, rules: list[tuple[str, str]]) -> tuple[str, bool]:
    """(path as JOBS.json holds it, whether a rule or the folder covered it): relative inside the export
    folder, else mapped."""
    rest = _under(os.path.normpath(path), os.path.normpath(folder))
    if rest is not None:
        return rest.replace(os.sep, "/"), True
    mapped = map_path(os.path.normpath(path), rules)
    return mapped, mapped != os.path.normpath(path) or not rules


# -- export


# the engine's option names (SyncOptions fields, what a press sends) -> the batch's (the sync CLI's)
_BATCH_NAMES = {"pads": "pads", "blend": "blend", "detector": "detector", "box": "box", "crf": "crf",
                "preset": "x264_preset", "codec": "codec", "exact_size": "exact_size", "batch_size": "batch_size"}


def batch_options(snap: EditSnapshot) -> dict:
    """The press's engine options as JOBS.json options. `device` is left to each farm machine."""
    out = {}
    for key, value in engine_options(snap).items():
        if key == "device" or value is None:
            continue
        if key == "smooth":
            out["no_smooth"] = not value
        elif key in _BATCH_NAMES:
            out[_BATCH_NAMES[key]] = value
        else:
            raise PlanError(f"The engine option '{key}' has no batch equivalent; the add-on and the engine do not "
                            "match, reinstall the add-on.")
    return out


def _seconds(frame: int, fps: float) -> float:
    return frame / fps  # full precision: the batch rounds seconds * fps back to this very frame


def face_option(choice) -> dict:
    return {"face_at": [float(v) for v in choice["point"]]} if isinstance(choice, dict) else {"face": str(choice)}


@dataclass
class Export:
    jobs: dict  # JOBS.json
    mixes: list  # the engine's export_batch mixes
    manifest: dict
    unmapped: list = field(default_factory=list)  # absolute paths no path map rule covers


def build_export(snap: EditSnapshot, plans: list[CutPlan], folder: str, rules: list[tuple[str, str]],
                 dubs: dict) -> Export:
    """JOBS.json, the dub mixes and the manifest for `plans` (one job per distinct result: cuts with the same
    inputs share it, as a press shares one file). `dubs`: cut name -> the dub strips' names under it."""
    fps_of = {c.name: c.fps for c in snap.cuts}
    unmapped: list[str] = []

    def where(path: str) -> str:
        out, covered = farm_path(path, folder, rules)
        if not covered and path not in unmapped:
            unmapped.append(path)
        return out

    jobs, mixes, entries, by_key = [], [], [], {}
    for p in plans:
        if p.key in by_key:
            by_key[p.key]["cuts"].append(p.cut)
            by_key[p.key]["dubs"][p.cut] = list(dubs.get(p.cut, []))
            continue
        fps = fps_of.get(p.cut) or snap.fps
        name = Path(p.output).name  # the result's own name, as a local press names it
        jid = Path(p.output).stem
        wav, out = f"dub/{jid}.wav", f"out/{name}"
        if isinstance(p.segments, str):
            face_ranges = p.segments
        else:
            face_ranges = [{"start": _seconds(r["start_frame"], fps), "end": _seconds(r["end_frame"], fps),
                            "face": r["face"]} for r in p.segments]
        jobs.append({"id": jid, "video": where(p.video), "audio": wav, "output": out,
                     "start": _seconds(p.start_frame, fps), "end": _seconds(p.end_frame, fps), "audio_start": 0,
                     "face_ranges": face_ranges,
                     "dub_ranges": [[_seconds(a, fps), _seconds(b, fps)] for a, b in p.source_dub_ranges],
                     "options": face_option(p.face_choice)})
        mixes.append({"output": wav, "dub": [dict(d) for d in p.dub], "seconds": (p.end_frame - p.start_frame) / fps})
        entry = {"id": jid, "output": out, "key": p.key, "cuts": [p.cut], "dubs": {p.cut: list(dubs.get(p.cut, []))}}
        by_key[p.key] = entry
        entries.append(entry)
    doc = {"version": 1, "checkpoint": where(snap.checkpoint), "options": batch_options(snap), "jobs": jobs}
    manifest = {"version": MANIFEST_VERSION, "scene": snap.scene, "path_map": [list(r) for r in rules],
                "jobs": entries}
    return Export(doc, mixes, manifest, unmapped)


# -- import


@dataclass
class Finished:
    """A job of the folder whose output is complete here."""

    id: str
    output: str  # absolute, on this machine
    key: str  # the content key its cuts had at export
    cuts: list
    dubs: dict
    clip: dict  # the engine's clip result (face_frames, segments), from the output's record


@dataclass
class FolderState:
    finished: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (job id, cuts, message)
    missing: list = field(default_factory=list)  # (job id, cuts, why)


def read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PlanError(f"Cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else None


def read_folder(folder: str) -> FolderState:
    """Which jobs of an exported folder are finished (output and its record here), failed (REPORT.json) or
    missing. PlanError when the folder is no Lip Sync export."""
    manifest = read_json(os.path.join(folder, MANIFEST))
    if manifest is None or manifest.get("version") != MANIFEST_VERSION or not isinstance(manifest.get("jobs"), list):
        raise PlanError(f"{folder} holds no Lip Sync batch ({MANIFEST} is missing or of another version): choose "
                        "the folder Export Batch wrote.")
    report = read_json(os.path.join(folder, REPORT)) or {}
    status = {j.get("id"): j for j in report.get("jobs") or [] if isinstance(j, dict)}
    state = FolderState()
    for e in manifest["jobs"]:
        jid, cuts = e["id"], list(e["cuts"])
        out = os.path.normpath(os.path.join(folder, e["output"]))
        rec = read_json(out + RECORD_SUFFIX) if os.path.isfile(out) else None
        ok = rec is not None and rec.get("job") == jid and (rec.get("output") or {}).get("size") == os.path.getsize(out)
        rep = status.get(jid)
        if ok:  # an output with its record is finished, whatever an older report says
            state.finished.append(Finished(jid, out, e["key"], cuts, dict(e.get("dubs") or {}),
                                           dict(rec.get("clip") or {})))
        elif rep is not None and rep.get("status") == "failed":
            state.failed.append((jid, cuts, str(rep.get("message") or "failed")))
        elif rec is None:
            why = "no output yet" if not os.path.isfile(out) else "its output has no record (still being written?)"
            state.missing.append((jid, cuts, why))
        else:
            state.missing.append((jid, cuts, "its output is not the one the batch recorded"))
    return state


def place_result(src: str, plan: CutPlan, clip: dict) -> None:
    """The farm's output as the local result file of `plan` (linked when the folder is on this disk, else
    copied; under a temporary name, then renamed) and its sidecar, as a press keeps them."""
    os.makedirs(os.path.dirname(plan.output), exist_ok=True)
    if not os.path.isfile(plan.output):
        tmp = os.path.join(os.path.dirname(plan.output), f".{Path(plan.output).name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
            os.replace(tmp, plan.output)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    side = plan.output + ".json"
    tmp = f"{side}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"key": plan.key, "clip": {**clip, "output": plan.output}}, fh)
    os.replace(tmp, side)
