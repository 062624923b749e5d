"""The "Lip Sync" tab in the Sequencer sidebar."""

from __future__ import annotations

import bpy

from . import compat, face_choice, jobs, prefs, snapshot


class LIPSYNC_PT_panel(bpy.types.Panel):
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "Lip Sync"
    bl_label = "Lip Sync"

    def draw(self, context):
        layout = self.layout
        scene = compat.edit_scene(context)
        if scene is None:
            return
        st = scene.lipsync
        _draw_setup_hint(layout, context)
        se = scene.sequence_editor
        if se is None:
            layout.label(text="Add a movie and the new audio first", icon="INFO")
            return
        col = layout.column()
        col.use_property_split = True
        col.use_property_decorate = False
        coll = compat.strips_prop_name(se)
        col.prop_search(st, "video_strip", se, coll, icon="FILE_MOVIE")
        strips = snapshot.top_strips(scene)
        movies = [s for s in strips if s.type == "MOVIE"]
        cuts = [s for s in movies if s.select and not snapshot.is_result(s)]
        video = snapshot.find_strip(scene, st.video_strip) if st.video_strip else snapshot.default_video(scene)
        if not st.video_strip:
            col.label(text=f"Using: {len(cuts)} selected movie strip(s)" if cuts else
                      (f"Using: {video.name}" if video else "Select the movie strips to lip-sync"))
        col.prop_search(st, "audio_strip", se, coll, icon="FILE_SOUND")
        if not st.audio_strip:
            dubs = [s for s in strips if s.type == "SOUND" and s.select and not snapshot.is_any_own_sound(s, movies)]
            audio = snapshot.default_audio(scene, video) if not dubs else None
            col.label(text=f"Dub: {len(dubs)} selected sound strip(s)" if dubs else
                      (f"Dub: {audio.name}" if audio else "Select the dub's sound strips"))
        col.separator()
        col.prop(st, "segment_source")
        col.prop(st, "blend_mode")
        row = col.row(align=True)
        row.prop(st, "pads")
        face_choice.draw(col, video)  # stored on the movie strip: Speaker, Largest, Left, Right or a point

        job = jobs.current
        row = layout.row(align=True)
        row.enabled = job is None
        row.operator("lipsync.detect_segments", icon="VIEWZOOM")
        row.operator("lipsync.sync", icon="PLAY_SOUND")
        layout.operator("lipsync.restore_original", icon="LOOP_BACK")
        row = layout.row(align=True)
        row.enabled = job is None
        row.operator("lipsync.export_batch", icon="EXPORT")
        row.operator("lipsync.import_batch", icon="IMPORT")
        if job is not None:
            box = layout.box()
            if hasattr(box, "progress"):  # UILayout.progress: 4.0+
                box.progress(factor=st.progress, type="BAR", text=st.stage or "working")
            else:
                box.label(text=f"{st.stage} ({st.progress * 100:.0f}%)")
            box.operator("lipsync.cancel", icon="CANCEL")
        elif st.message:
            layout.label(text=st.message)


def _draw_setup_hint(layout, context) -> None:
    """Point a first-time user at the preferences' Set up Engine / Download Weights buttons."""
    p = prefs.get(context)
    if p is None:
        return
    if not prefs.engine_python(p):
        layout.label(text="No engine yet: Preferences > Add-ons > Lip Sync > Set up Engine", icon="ERROR")
    elif not p.checkpoint_path.strip():
        layout.label(text="No weights yet: Preferences > Add-ons > Lip Sync > Download Weights", icon="ERROR")


classes = (LIPSYNC_PT_panel,)


register, unregister = bpy.utils.register_classes_factory(classes)
