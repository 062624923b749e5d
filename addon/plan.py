"""What every step shares: the editor-facing error, and reading the engine's segments answer (no bpy)."""

from __future__ import annotations


class PlanError(Exception):
    """Bad input: the message says what to do; the timeline is left as it is."""


def detected_ranges(result: dict) -> list[tuple[int, int, bool]]:
    """The worker's segments result -> (src_start, src_end, face) rows.

    Exactly the contract's keys (docs/CONTRACTS.md): `start_frame`, `end_frame` (source frames, end exclusive)
    and `face`. Anything else means engine and add-on do not match; guessing would misplace every marker.
    """
    rows = result.get("segments")
    if not isinstance(rows, list):
        raise PlanError("The engine's answer has no segments; engine and add-on do not match, reinstall the add-on.")
    out = []
    for r in rows:
        try:
            start, end, face = r["start_frame"], r["end_frame"], r["face"]
            if not isinstance(face, bool):
                raise TypeError("face")
            out.append((int(start), int(end), face))
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"The engine's segment {r!r} lacks start_frame, end_frame or face ({exc}); engine and "
                            "add-on do not match, reinstall the add-on.") from exc
    return out


def face_options(choice) -> dict:
    """A clip's face_choice as the job options `face` / `face_at` (what the segments job takes)."""
    if isinstance(choice, dict):
        return {"face_at": list(choice["point"])}
    return {"face": choice}


def face_label(row: dict) -> str:
    """What a detected face segment lip-syncs among several faces, for its marker: "speaker, left of 2",
    "largest: no sound, right of 2", "point, left of 3"; "" with one face or none."""
    faces, k = row.get("faces"), row.get("chosen")
    if not faces or k is None or not 0 <= k < len(faces):
        return ""
    kind = str(row.get("choice") or "").split(" ")[0]
    if row.get("fallback"):
        kind = f"largest: {row['fallback']}"
    if len(faces) == 1:  # nothing to choose between: the marker stays "LS face"
        return ""
    centres = sorted((f["box"][0] + f["box"][2]) / 2 for f in faces)
    rank = centres.index((faces[k]["box"][0] + faces[k]["box"][2]) / 2)
    where = {0: "left"}.get(rank, "right" if rank == len(faces) - 1 else f"{rank + 1}th from left")
    return f"{kind}, {where} of {len(faces)}"
