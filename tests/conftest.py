import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Blender reads BLENDER_USER_RESOURCES when bpy is first imported: point it at a temp folder before any test
# module can import bpy, so tests never install into a real Blender user folder (see tests/blender_env.py).
if "LIPSYNC_TEST_USER_RESOURCES" not in os.environ:
    _user = tempfile.mkdtemp(prefix="lipsync-bl-user-")
    os.environ["BLENDER_USER_RESOURCES"] = os.environ["LIPSYNC_TEST_USER_RESOURCES"] = _user
    atexit.register(shutil.rmtree, _user, ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SHARED_MEDIA = ROOT.parent / "shared" / "media"


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def shared_media():
    if not (SHARED_MEDIA / "talking_head_a.mp4").exists():
        pytest.skip(f"real footage not found at {SHARED_MEDIA} (see shared/media/README.md)")
    return SHARED_MEDIA


class _RunsACommand:
    """Unpickling this would run `touch MARKER` through os.system (torch names it posix.system): a harmless
    stand-in for a checkpoint built to run code. The marker file proves it did not run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture
def code_carrying_checkpoint(tmp_path):
    """(checkpoint path, marker path): a checkpoint whose pickle would run a shell command when loaded."""
    import torch

    marker = tmp_path / "code_ran.txt"
    path = tmp_path / "carries_code.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "extra": _RunsACommand(marker)}, path)
    return path, marker
