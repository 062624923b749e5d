"""Variable-frame-rate footage in the engine: decoded on Blender's frame grid, lip-synced with each frame's mel
window at the time it plays, written on that grid. (tests/test_vfr_blender.py renders the same clips in Blender.)
"""

from __future__ import annotations

import numpy as np
import pytest
import vfr_media as vm

from lipsync_core import audio as A
from lipsync_core.media import FrameReader, probe
from lipsync_core.media import ffmpeg as ffbin
from lipsync_core.sync import ClipRenderer, SyncOptions, sync

LOST_EVERY, LOST_AT = 7, 3  # the made clips lose source frames n with n % 7 == 3


def grid_codes(path, info=None, **kw) -> list[int]:
    with FrameReader(path, info=info, **kw) as r:
        return [vm.read_code(f) for f in r]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return vm.made_vfr_clips(tmp_path_factory.mktemp("vfr"))


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    from tools.sample_media import speech_wav

    return speech_wav(tmp_path_factory.mktemp("vfr_speech") / "speech.wav", seconds=2.5)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    from tools.random_weights import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("vfr_ckpt") / "random.pth")


def expected_codes(n_slots: int) -> list[int]:
    """Blender's picture per slot for the made clips: a lost frame's slot repeats the frame before it."""
    return [n - 1 if n % LOST_EVERY == LOST_AT else n for n in range(n_slots)]


@pytest.mark.parametrize("key", ["drop", "late"])
@pytest.mark.parametrize("probe_mode", ["ffprobe", "no-ffprobe"])
def test_lost_frames_are_repeated_on_the_nominal_grid(clips, key, probe_mode, monkeypatch):
    if probe_mode == "no-ffprobe":
        monkeypatch.setattr(ffbin, "ffprobe_exe", lambda: None)
    info = probe(clips[key])
    # 60 frames at 30 fps less 8 lost: the engine used to see 51 frames at 25.9 fps
    assert (info.fps_rational, info.frames, info.decoded_frames, info.variable_rate) == ("30/1", 59, 51, True)
    want = expected_codes(info.frames)
    assert grid_codes(clips[key], info) == want
    # frame-exact starts anywhere on the grid, on a repeated slot or right after one
    for start in (1, 2, 3, 4, 5, 10, 11, 17, 24, 31, info.frames - 2):
        assert grid_codes(clips[key], info, start_frame=start, end_frame=start + 2) == want[start : start + 2]
    with FrameReader(clips[key], start_frame=9, end_frame=13, info=info, prefetch=0) as r:  # read inline
        frames = list(r)
    assert [vm.read_code(f) for f in frames] == want[9:13]
    frames[0][:] = 0  # a repeated slot is its own array
    assert vm.read_code(frames[1]) == want[10]


def test_constant_rate_files_are_not_scanned(clips):
    info = probe(clips["cfr"])
    assert (info.frames, info.variable_rate, info.frame_map, info.frame_times) == (60, False, None, None)
    assert grid_codes(clips["cfr"], info, start_frame=29, end_frame=33) == [29, 30, 31, 32]


def test_off_grid_timestamps_and_other_containers_keep_every_picture(clips):
    for key in ("jitter", "mkv", "steps"):
        info = probe(clips[key])
        codes = grid_codes(clips[key], info)
        assert len(codes) == info.frames and info.variable_rate, key
        assert codes == sorted(codes), key  # never back in time
        kept = {n for n in range(60) if key == "steps" or n % (11 if key == "jitter" else 7) != (5 if key == "jitter"
                                                                                                  else 3)}
        # each kept frame shows at least once except where two fall into one slot
        assert len(set(codes)) >= len(kept) - 0.15 * len(kept), key


def test_cli_output_is_on_the_grid_and_each_mouth_hears_its_slot(clips, speech, random_checkpoint, tmp_path,
                                                                  monkeypatch):
    """sync() on a variable-rate clip: a constant-rate file on the source's nominal grid (a lost frame's slot
    repeats its picture, as Blender shows it), and output frame n's mouth made from the mel window at n / rate,
    the time that frame plays beside the audio."""
    src = clips["late"]
    info = probe(src)
    heard = []
    real_predict = ClipRenderer._predict

    def predict(self, mels, crops, clock, *rest):
        heard.append(np.array(mels))
        return real_predict(self, mels, crops, clock, *rest)

    monkeypatch.setattr(ClipRenderer, "_predict", predict)
    out = tmp_path / "synced.mp4"
    box = (40, 40, 120, 116)  # below the code bar
    result = sync(str(src), str(speech), str(out), str(random_checkpoint),
                  SyncOptions(box=box, segments="all", batch_size=16, device="cpu"))
    assert result["frames"] == info.frames == 59 and result["fps"] == 30.0
    made = probe(out)
    assert (made.frames, made.fps_rational, made.variable_rate) == (59, "30/1", False)
    assert grid_codes(out, made) == expected_codes(59)
    # the mel window of frame n starts at n / 30 s (80 mel columns a second)
    mels = np.concatenate(heard)[:59]
    mel = A.melspectrogram(A.load_audio(str(speech), duration=59 / 30))
    for n in range(59):
        start = min(int(n * 80 / 30), mel.shape[1] - A.MEL_STEP)
        assert np.array_equal(mels[n], mel[:, start : start + A.MEL_STEP]), n
