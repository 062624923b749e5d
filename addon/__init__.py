"""Lip Sync for Blender's Video Sequencer: Wav2Lip on movie strips, run by the bundled lipsync_core engine.

The engine runs in its own process (`<python with torch> -m lipsync_core.worker`); this package never imports
torch or lipsync_core. Each module registers its own classes; unregister runs in reverse. The bpy modules are
imported in register() so the pure ones (timeline, plan, job_steps, worker_client, runner) import without
Blender for tests.
"""


def _modules():
    from . import batch_ops, face_choice, helper_ops, jobs, ops, prefs, props, setup_ops, ui, weights_ops

    return (prefs, props, face_choice, jobs, ops, batch_ops, helper_ops, setup_ops, weights_ops, ui)


def register():
    for m in _modules():
        m.register()


def unregister():
    for m in reversed(_modules()):
        m.unregister()
