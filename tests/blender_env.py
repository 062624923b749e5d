"""bpy for the add-on tests: user resources in a temp folder, the extension built and installed once.

Import this module before anything imports bpy: BLENDER_USER_RESOURCES is read when bpy is imported, and the
tests must never install into a real Blender user folder.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = "bl_ext.user_default.lipsync"

if "bpy" in sys.modules:
    if not os.environ.get("LIPSYNC_TEST_USER_RESOURCES"):
        raise RuntimeError("bpy was imported before tests/blender_env.py: import blender_env first so Blender's "
                           "user folder points at a temp dir")
    USER = os.environ["LIPSYNC_TEST_USER_RESOURCES"]
else:
    USER = tempfile.mkdtemp(prefix="lipsync-bl-user-")
    os.environ["BLENDER_USER_RESOURCES"] = USER
    os.environ["LIPSYNC_TEST_USER_RESOURCES"] = USER
    atexit.register(shutil.rmtree, USER, ignore_errors=True)

import bpy  # noqa: E402  (bpy reads BLENDER_USER_RESOURCES at import)

_zip: Path | None = None


def build_zip() -> Path:
    """Build the extension zip (once per process) the way `python build.py extension` does."""
    global _zip
    if _zip is None or not _zip.exists():
        sys.path.insert(0, str(ROOT))
        from tools.build_extension import build

        _zip = build(Path(tempfile.mkdtemp(prefix="lipsync-dist-", dir=USER)))
    return _zip


def install():
    """Install + enable the built zip as Blender does; returns the add-on's module."""
    if MODULE not in bpy.context.preferences.addons:
        res = bpy.ops.extensions.package_install_files(filepath=str(build_zip()), repo="user_default",
                                                       enable_on_install=True)
        assert res == {"FINISHED"}, res
    return importlib.import_module(MODULE)


def submodule(name: str):
    return importlib.import_module(f"{MODULE}.{name}")


def prefs():
    return bpy.context.preferences.addons[MODULE].preferences


def new_scene(name: str = "Edit", fps: int = 25):
    """A fresh scene made current, set up for video editing."""
    scene = bpy.data.scenes.new(name)
    bpy.context.window.scene = scene
    scene.render.fps, scene.render.fps_base = fps, 1.0
    scene.view_settings.view_transform = "Standard"
    scene.sequence_editor_create()
    return scene


def place_strip(coll, kind: str, name: str, path, channel: int, content_at: int, lo: int, hi: int):
    """A MOVIE or SOUND strip whose file's frame 0 sits at `content_at`, visible over [lo, hi), on `channel`
    (made on a free channel first: a new strip may not overlap one already there)."""
    new = coll.new_movie if kind == "MOVIE" else coll.new_sound
    s = new(name, str(path), 20 + channel, content_at)
    s.frame_offset_start = lo - content_at
    s.frame_final_end = hi
    s.channel = channel
    return s


def strips(scene):
    se = scene.sequence_editor
    return list(se.strips if hasattr(se, "strips") else se.sequences)


def fingerprint(scene) -> tuple:
    """Everything on the timeline a lip-sync run may change, to compare before/after."""
    rows = tuple(sorted((s.name, s.type, s.channel, s.frame_start, s.frame_final_start, s.frame_final_end, s.mute,
                         getattr(s, "filepath", "")) for s in strips(scene)))
    markers = tuple(sorted((m.frame, m.name) for m in scene.timeline_markers))
    return rows, markers


# -- fixtures shared by the add-on tests (import them into a test module to use them)

import pytest  # noqa: E402

FACE1, NOFACE, FACE2 = 40, 30, 40  # frames of the made clip: face / no face / face at 25 fps
CLIP_FRAMES = FACE1 + NOFACE + FACE2
TONE_HZ = 440.0


@pytest.fixture(scope="session")
def lipsync_addon():
    return install()


@pytest.fixture(scope="session")
def made_media(tmp_path_factory):
    """clip.mp4 (face / no face / face, its own sound a 440 Hz tone), speech.wav (the new dialogue)."""
    from tools import sample_media

    d = tmp_path_factory.mktemp("addon_media")
    tone = sample_media.tone_wav(d / "tone.wav", CLIP_FRAMES / 25 + 0.5, TONE_HZ)
    sample_media.face_noface_face_clip(d / "clip.mp4", FACE1, NOFACE, FACE2, audio=tone)
    sample_media.speech_wav(d / "speech.wav", seconds=CLIP_FRAMES / 25)
    return d


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    from tools.random_weights import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "random_wav2lip.pth")


def configure(checkpoint_path) -> object:
    """Preferences as a user with the engine set up would have them: this venv's Python (it has torch)."""
    p = prefs()
    p.python_path, p.checkpoint_path, p.device = sys.executable, str(checkpoint_path), "CPU"
    return p


@pytest.fixture
def configured(lipsync_addon, checkpoint):
    return configure(checkpoint)


def add_edit(scene, media_dir: Path, audio_at: int = 1, audio_trim_start: int = 0):
    """movie + its own sound (channels 1, 2) at frame 1 and the new speech on channel 3."""
    se = scene.sequence_editor
    coll = se.strips if hasattr(se, "strips") else se.sequences
    movie = coll.new_movie("clip", str(media_dir / "clip.mp4"), 1, 1)
    own = coll.new_sound("clip.sound", str(media_dir / "clip.mp4"), 2, 1)
    speech = coll.new_sound("speech", str(media_dir / "speech.wav"), 3, audio_at)
    if audio_trim_start:
        speech.frame_offset_start = audio_trim_start
    se.active_strip = movie
    scene.frame_start, scene.frame_end = 1, movie.frame_final_end - 1
    return movie, own, speech
