"""scene.lipsync: the editor's choices and the running job's state for the panel."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    EnumProperty,
    FloatProperty,
    IntVectorProperty,
    PointerProperty,
    StringProperty,
)


class LIPSYNC_PG_settings(bpy.types.PropertyGroup):
    video_strip: StringProperty(name="Video", description="Movie strip to lip-sync; empty: the active movie strip")
    audio_strip: StringProperty(
        name="Audio", description="Sound strip with the new dialogue; empty: the sound strip under the video "
                                  "that is not the movie's own")
    segment_source: EnumProperty(
        name="Segments",
        items=[("MARKERS", "Markers", "Consecutive timeline markers inside the video strip are the segments"),
               ("AUTO", "Auto", "Detect face / no-face segments first (places 'LS' markers)"),
               ("STRIP", "Whole Strip", "The strip's whole visible range is one segment")],
        default="MARKERS",
    )
    blend_mode: EnumProperty(
        name="Blend",
        items=[("FEATHER", "Feather", "Soft edge around the new mouth"),
               ("BOX", "Box", "Paste the whole face box as Wav2Lip does")],
        default="FEATHER",
    )
    pads: IntVectorProperty(
        name="Pads", description="Pixels added to the face box: top, bottom, left, right",
        size=4, default=(0, 10, 0, 0), min=0, max=200,
    )
    # Job state, written by the operators on the main thread only.
    running: BoolProperty(name="Running")
    progress: FloatProperty(name="Progress", subtype="FACTOR", min=0.0, max=1.0)
    stage: StringProperty(name="Stage")
    message: StringProperty(name="Last Message")


classes = (LIPSYNC_PG_settings,)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.lipsync = PointerProperty(type=LIPSYNC_PG_settings)


def unregister():
    del bpy.types.Scene.lipsync
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
