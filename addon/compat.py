"""Everything that differs between Blender 4.2 LTS and 5.0, in one place.

- 4.4 renamed `sequence_editor.sequences(_all)` to `strips(_all)`; 5.0 dropped the old names.
- 5.0 VSE operators act on `context.sequencer_scene` (None in module mode), older ones on `context.scene`.
- 5.0 has `Strip.split()`; 4.2 only the split operator (which needs a context).
Feature checks where the API can tell, version tuples where it cannot (never string comparison).
"""

from __future__ import annotations

import bpy

HAS_SEQUENCER_SCENE = bpy.app.version >= (5, 0, 0)


def strips(se):
    """Top-level strips of a sequence editor."""
    return se.strips if hasattr(se, "strips") else se.sequences


def strips_all(se):
    return se.strips_all if hasattr(se, "strips_all") else se.sequences_all


def strips_prop_name(se) -> str:
    """The collection's property name, for UILayout.prop_search."""
    return "strips" if hasattr(se, "strips") else "sequences"


def new_movie(se, name: str, filepath: str, channel: int, frame_start: int):
    # Same positional signature in 4.2 and 5.0; ORIGINAL keeps the source size so a result matches its source.
    return strips(se).new_movie(name, filepath, channel, frame_start, fit_method="ORIGINAL")


def new_sound(se, name: str, filepath: str, channel: int, frame_start: int):
    return strips(se).new_sound(name, filepath, channel, frame_start)


def remove_strip(se, strip) -> None:
    strips(se).remove(strip)


def edit_scene(context):
    """The scene the Sequencer edits: 5.0's `sequencer_scene` when set, else the window's scene."""
    return getattr(context, "sequencer_scene", None) or context.scene


def sequencer_override(scene):
    """A context in which VSE operators act on `scene`."""
    if HAS_SEQUENCER_SCENE:
        return bpy.context.temp_override(scene=scene, sequencer_scene=scene)
    return bpy.context.temp_override(scene=scene)


def split_strip(scene, strip, frame: int) -> None:
    """Soft-split one strip at `frame`, keeping modifiers and custom properties on both halves."""
    if hasattr(strip, "split"):  # Strip.split(): no context needed
        kwargs = {"frame": int(frame), "split_method": "SOFT"}
        if "ignore_connections" in strip.bl_rna.functions["split"].parameters:
            kwargs["ignore_connections"] = True  # only the sound, not a movie connected to it
        strip.split(**kwargs)
        return
    # 4.2: the operator, on this strip alone (selection is restored after).
    se = scene.sequence_editor
    selected = [s for s in strips(se) if s.select]
    for s in selected:
        s.select = False
    strip.select = True
    kwargs = {"frame": int(frame), "channel": strip.channel, "type": "SOFT", "side": "BOTH",
              "use_cursor_position": False, "ignore_selection": False}
    if "ignore_connections" in bpy.ops.sequencer.split.get_rna_type().properties:
        kwargs["ignore_connections"] = True  # split only this strip, not the movie it is connected to
    try:
        with sequencer_override(scene):
            bpy.ops.sequencer.split(**kwargs)
    finally:
        for s in strips(se):
            s.select = False
        for s in selected:
            s.select = True


def set_status(context, text: str | None) -> None:
    """Status bar text; no-op without a workspace (module mode)."""
    ws = getattr(context, "workspace", None)
    if ws is not None:
        try:
            ws.status_text_set(text)
        except RuntimeError:  # no status bar to write to
            pass
