"""Which face a cut lip-syncs, stored on its movie strip (`strip.lipsync_face`), and the pick operator.

The choice lives on the strip, so it survives save/load and applies to every press on that cut: Speaker (the
face whose mouth moves with the strip's own sound), Largest, Left, Right, or a Point in the movie's pixels
(top-left origin, as the engine counts them), typed or picked by clicking the face in the Sequencer preview.
`face_option_for(strip)` is what a job carries per clip (`"face_choice"`, docs/CONTRACTS.md).
"""

from __future__ import annotations

import math

import bpy
from bpy.props import EnumProperty, FloatVectorProperty, PointerProperty, StringProperty

MODES = [("SPEAKER", "Speaker", "The face whose mouth moves with this strip's own sound (the largest when that "
                                "is unclear; the engine warns)"),
         ("LARGEST", "Largest", "The largest face"),
         ("LEFT", "Left", "The leftmost face"),
         ("RIGHT", "Right", "The rightmost face"),
         ("POINT", "Point", "The face nearest a point of the movie (pick it in the preview, or type it)")]


class LIPSYNC_PG_face(bpy.types.PropertyGroup):
    mode: EnumProperty(name="Face", items=MODES, default="SPEAKER",
                       description="Which face of this cut to lip-sync when several are visible")
    point: FloatVectorProperty(name="Point", size=2, default=(0.0, 0.0), min=0.0, precision=0,
                               description="X, Y in the movie's pixels from its top-left corner")


def strip_type():
    """Blender 4.4+ calls a strip `Strip`; 4.2-4.3 `Sequence`."""
    return getattr(bpy.types, "Strip", None) or bpy.types.Sequence


def face_option_for(strip) -> str | dict:
    """The job's per-clip "face_choice" for this movie strip: "speaker" | "largest" | "left" | "right" |
    {"point": [x, y]}."""
    choice = getattr(strip, "lipsync_face", None)
    if choice is None:
        return "speaker"
    return face_option(choice.mode, tuple(choice.point))


def face_option(mode: str, point=(0.0, 0.0)) -> str | dict:
    """The plain form of a (mode, point) choice (no bpy data needed)."""
    if mode == "POINT":
        return {"point": [round(float(point[0]), 2), round(float(point[1]), 2)]}
    return mode.lower()


# ------------------------------------------------------------------------------------------ preview -> source


def preview_to_source(view_xy, source_size, *, offset=(0.0, 0.0), scale=(1.0, 1.0), rotation=0.0,
                      origin=(0.5, 0.5), crop=(0, 0, 0, 0), flip=(False, False)):
    """A point of the Sequencer preview (view2d coordinates: render pixels, (0, 0) at the middle of the frame, y
    up) -> the movie's pixel under it (x, y from its top-left corner), or None outside the visible picture.

    The strip's image (source size, fit "Original") sits centred on the frame, moved by `offset`, scaled and
    rotated (radians, counter-clockwise) about `origin` (fractions of the image), flipped, and cropped
    (`crop` = min_x, max_x, min_y, max_y pixels off the left, right, bottom and top edges, picture kept in place).
    """
    sw, sh = float(source_size[0]), float(source_size[1])
    px = (origin[0] - 0.5) * sw
    py = (origin[1] - 0.5) * sh  # the pivot relative to the image's middle, y up
    dx, dy = view_xy[0] - offset[0] - px, view_xy[1] - offset[1] - py
    c, s = math.cos(-rotation), math.sin(-rotation)
    rx, ry = c * dx - s * dy, s * dx + c * dy
    if scale[0] == 0 or scale[1] == 0:
        return None
    qx, qy = rx / scale[0] + px, ry / scale[1] + py
    if flip[0]:
        qx = -qx
    if flip[1]:
        qy = -qy
    x, y = qx + sw / 2, sh / 2 - qy
    left, right, bottom, top = crop
    if not (left <= x < sw - right and top <= y < sh - bottom):
        return None
    return x, y


def strip_source_point(strip, view_xy):
    """preview_to_source with a movie strip's own size, transform and crop."""
    elem = strip.elements[0] if len(strip.elements) else None
    size = (elem.orig_width, elem.orig_height) if elem is not None and elem.orig_width else None
    if size is None:
        return None
    t, c = strip.transform, strip.crop
    origin = tuple(getattr(t, "origin", (0.5, 0.5)))
    return preview_to_source(view_xy, size, offset=(t.offset_x, t.offset_y), scale=(t.scale_x, t.scale_y),
                             rotation=t.rotation, origin=origin, crop=(c.min_x, c.max_x, c.min_y, c.max_y),
                             flip=(strip.use_flip_x, strip.use_flip_y))


def _scene_strips(context):
    from . import compat

    scene = compat.edit_scene(context)
    if scene is None or scene.sequence_editor is None:
        return None
    return compat.strips_all(scene.sequence_editor)


class LIPSYNC_OT_pick_face(bpy.types.Operator):
    """Click the face to lip-sync in the Sequencer preview (Esc or right-click: cancel)"""

    bl_idname = "lipsync.pick_face"
    bl_label = "Pick Face in Preview"
    bl_options = {"REGISTER", "UNDO"}

    strip_name: StringProperty(options={"HIDDEN", "SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        return _scene_strips(context) is not None

    def invoke(self, context, event):
        strips = _scene_strips(context)
        if not self.strip_name:  # the panel names the strip it shows; else the active movie strip
            from . import compat

            active = compat.edit_scene(context).sequence_editor.active_strip
            self.strip_name = active.name if active is not None and active.type == "MOVIE" else ""
        if strips.get(self.strip_name) is None:
            self.report({"ERROR"}, "Pick a movie strip (make it active) first")
            return {"CANCELLED"}
        context.window_manager.modal_handler_add(self)
        if context.area is not None:
            context.area.header_text_set("Click the face to lip-sync in the preview (Esc: cancel)")
        return {"RUNNING_MODAL"}

    def _finish(self, context):
        if context.area is not None:
            context.area.header_text_set(None)

    def modal(self, context, event):
        if event.type in {"ESC", "RIGHTMOUSE"} and event.value == "PRESS":
            self._finish(context)
            return {"CANCELLED"}
        if event.type != "LEFTMOUSE" or event.value != "PRESS":
            return {"PASS_THROUGH"}
        region = _preview_region_at(context, event.mouse_x, event.mouse_y)
        if region is None:
            self.report({"WARNING"}, "Click inside the Sequencer preview")
            return {"RUNNING_MODAL"}
        strip = _scene_strips(context).get(self.strip_name)
        view = region.view2d.region_to_view(event.mouse_x - region.x, event.mouse_y - region.y)
        point = strip_source_point(strip, view) if strip is not None else None
        if point is None:
            self.report({"WARNING"}, f"That point is outside '{self.strip_name}': click on its picture")
            return {"RUNNING_MODAL"}
        strip.lipsync_face.mode = "POINT"
        strip.lipsync_face.point = point
        self.report({"INFO"}, f"'{strip.name}' lip-syncs the face nearest {point[0]:.0f}, {point[1]:.0f}")
        self._finish(context)
        return {"FINISHED"}


def _preview_region_at(context, x: int, y: int):
    """The Sequencer preview region under window coordinates (x, y), if any."""
    for area in context.window.screen.areas:
        if area.type != "SEQUENCE_EDITOR":
            continue
        for region in area.regions:
            if region.type == "PREVIEW" and region.x <= x < region.x + region.width \
                    and region.y <= y < region.y + region.height:
                return region
    return None


def draw(layout, strip) -> None:
    """The panel's Face rows for the movie strip being synced."""
    if strip is None or not hasattr(strip, "lipsync_face"):
        return
    col = layout.column()
    col.use_property_split = True
    col.use_property_decorate = False
    col.prop(strip.lipsync_face, "mode", text="Face")
    if strip.lipsync_face.mode == "POINT":
        col.prop(strip.lipsync_face, "point", text="X, Y")
    col.operator("lipsync.pick_face", icon="EYEDROPPER").strip_name = strip.name


classes = (LIPSYNC_PG_face, LIPSYNC_OT_pick_face)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    strip_type().lipsync_face = PointerProperty(type=LIPSYNC_PG_face)


def unregister():
    del strip_type().lipsync_face
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
