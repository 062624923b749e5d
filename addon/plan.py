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
