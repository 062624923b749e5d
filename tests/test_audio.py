"""Audio decoding, the exact Wav2Lip mel spectrogram, and the per-frame chunk rule."""

import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal

from lipsync_core import audio as A
from lipsync_core.errors import LipsyncError
from tools import sample_media


def reference_mel(wav, pad_mode="reflect"):
    """The reference's audio.melspectrogram, computed independently with librosa and scipy."""
    import librosa

    y = scipy.signal.lfilter([1, -0.97], [1], wav)
    d = librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800, pad_mode=pad_mode)
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    s = 20 * np.log10(np.maximum(1e-5, basis @ np.abs(d))) - 20
    return np.clip(8 * ((s + 100) / 100) - 4, -4, 4)


def reference_chunks(mel, fps):
    """The reference inference.py loop, verbatim in behaviour."""
    chunks, mult, i = [], 80.0 / fps, 0
    while True:
        start = int(i * mult)
        if start + 16 > len(mel[0]):
            chunks.append(mel[:, len(mel[0]) - 16 :])
            break
        chunks.append(mel[:, start : start + 16])
        i += 1
    return np.array(chunks)


@pytest.fixture(scope="module")
def speech(media_dir):
    path = sample_media.speech_wav(media_dir / "speech16k.wav")
    return path, A.load_audio(str(path))


def test_mel_filterbank_is_librosas():
    import librosa

    want = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    got = A._mel_basis()
    assert got.shape == want.shape == (80, 401) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    assert (got > 0).sum() == (want > 0).sum()


def test_mel_needs_no_librosa():
    """librosa costs a second to import; the engine builds the filterbank itself."""
    import subprocess
    import sys

    code = "import sys; from lipsync_core import audio; audio._mel_basis(); print('librosa' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_mel_matches_reference_on_speech(speech):
    _, wav = speech
    assert len(wav) > 16000
    ours = A.melspectrogram(wav)
    ref = reference_mel(wav)
    assert ours.shape == ref.shape == (80, 1 + len(wav) // 200)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-3


def test_mel_uses_reflect_padding_at_both_ends():
    rng = np.random.default_rng(1)
    wav = (rng.standard_normal(8000) * 0.3).astype(np.float32)
    ours = A.melspectrogram(wav)
    # first and last frames built by hand: reflect-pad 400 samples, periodic Hann, DFT
    y = scipy.signal.lfilter([1, -0.97], [1], wav)
    yp = np.pad(y, 400, mode="reflect")
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(800) / 800)
    import librosa

    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    for col, start in ((0, 0), (-1, (ours.shape[1] - 1) * 200)):
        mag = np.abs(np.fft.rfft(yp[start : start + 800] * hann))
        s = 20 * np.log10(np.maximum(1e-5, basis @ mag)) - 20
        expect = np.clip(8 * ((s + 100) / 100) - 4, -4, 4)
        assert np.abs(ours[:, col] - expect).max() < 1e-4
    # librosa >= 0.10's default (zero padding) gives different edge frames: that is the trap we avoid
    zero = reference_mel(wav, pad_mode="constant")
    assert np.abs(ours[:, 0] - zero[:, 0]).max() > 0.05
    assert np.abs(ours[:, -1] - zero[:, -1]).max() > 0.05
    assert np.abs(ours[:, 5:-5] - zero[:, 5:-5]).max() < 1e-4


def test_mel_values_for_silence_and_range():
    mel = A.melspectrogram(np.zeros(4000, np.float32))
    assert np.allclose(mel, -4.0)  # 20*log10(1e-5) - 20 = -120 dB -> clipped to -4
    loud = A.melspectrogram(np.sin(np.arange(16000) * 2 * np.pi * 1000 / 16000).astype(np.float32))
    assert loud.max() <= 4.0 and loud.min() >= -4.0 and loud.max() > 1.0


@pytest.mark.parametrize("fps", [24000 / 1001, 24.0, 25.0, 30000 / 1001, 29.97, 30.0, 50.0, 60.0])
@pytest.mark.parametrize("seconds", [1.0, 3.37, 7.0])
def test_mel_chunks_follow_reference_rule(fps, seconds):
    rng = np.random.default_rng(2)
    mel = rng.standard_normal((80, 1 + int(seconds * 16000) // 200)).astype(np.float32)
    ours = A.mel_chunks(mel, fps)
    ref = reference_chunks(mel, fps)
    assert ours.shape == ref.shape
    assert np.array_equal(ours, ref)
    # the per-frame accessor used by the streaming pipeline agrees chunk by chunk
    assert np.array_equal(A.mel_chunk_at(mel, np.arange(len(ref)), fps), ref)
    assert np.array_equal(A.mel_chunk_at(mel, len(ref) - 1, fps), ref[-1])


def test_chunk_rule_at_2997_count():
    # 10 s at 30000/1001: 801 mel frames; the reference yields 299 chunks (298 regular + the clamped last)
    mel = np.zeros((80, 801), np.float32)
    starts = A.chunk_starts(801, 30000 / 1001)
    assert len(starts) == len(reference_chunks(mel, 30000 / 1001))
    assert starts[1] == 2 and starts[2] == 5 and starts[-1] == 801 - 16


def test_load_audio_16k_mono_wav_is_exact(tmp_path):
    rng = np.random.default_rng(3)
    pcm = (rng.standard_normal(16000) * 3000).astype(np.int16)
    path = tmp_path / "mono16k.wav"
    scipy.io.wavfile.write(path, 16000, pcm)
    wav = A.load_audio(str(path))
    assert wav.dtype == np.float32
    assert np.array_equal(wav, pcm.astype(np.float32) / 32768.0)


def test_load_audio_resamples_and_downmixes_like_librosa(tmp_path):
    import librosa

    t = np.arange(44100 * 2) / 44100
    left = 0.3 * np.sin(2 * np.pi * 300 * t)
    right = 0.2 * np.sin(2 * np.pi * 700 * t)
    path = tmp_path / "stereo44k.wav"
    scipy.io.wavfile.write(path, 44100, (np.stack([left, right], 1) * 32767).astype(np.int16))
    ours = A.load_audio(str(path))
    ref = librosa.load(str(path), sr=16000)[0]
    assert len(ours) == len(ref) == 32000
    assert np.abs(ours - ref).max() < 1e-4


def test_load_audio_offset_duration_and_video_track(tmp_path):
    path = sample_media.tone_wav(tmp_path / "tone.wav", 2.0, sr=16000)
    full = A.load_audio(str(path))
    late = A.load_audio(str(path), offset=0.5, duration=1.0)
    assert len(late) == 16000
    assert np.abs(late - full[8000:24000]).max() < 1e-6
    early = A.load_audio(str(path), offset=-0.25, duration=1.0)
    assert np.all(early[:4000] == 0) and np.abs(early[4000:] - full[:12000]).max() < 1e-6
    past = A.load_audio(str(path), offset=1.5, duration=1.0)
    assert len(past) == 16000 and np.all(past[8000:] == 0)
    clip = sample_media.write_video(tmp_path / "v.mp4", sample_media.noface_frames(25), audio=path)
    sound = A.load_audio(str(clip))
    assert 0.9 * 16000 < len(sound) < 1.1 * 16000 and np.abs(sound).max() > 0.1


def test_load_audio_errors(tmp_path):
    with pytest.raises(LipsyncError, match="not found"):
        A.load_audio(str(tmp_path / "missing.wav"))
    silent = sample_media.write_video(tmp_path / "silent.mp4", sample_media.noface_frames(5))
    with pytest.raises(LipsyncError, match="no audio stream"):
        A.load_audio(str(silent))
    junk = tmp_path / "junk.wav"
    junk.write_text("this is not audio")
    with pytest.raises(LipsyncError):
        A.load_audio(str(junk))
    with pytest.raises(LipsyncError, match="too short"):
        A.melspectrogram(np.zeros(100, np.float32))


def test_sound_shorter_than_one_window_is_padded_with_silence(tmp_path):
    """A cut of a few frames has under 0.2 s of sound, fewer mel steps than one window: the window is filled
    with silence (the normalised floor) instead of failing, and a whole sync of such a cut works."""
    mel = A.melspectrogram(np.random.default_rng(0).standard_normal(1600).astype(np.float32) * 0.1)  # 0.1 s
    assert mel.shape[1] < A.MEL_STEP
    chunks = A.mel_chunk_at(mel, np.arange(3), 25.0)
    assert chunks.shape == (3, 80, A.MEL_STEP)
    assert np.array_equal(chunks[0][:, : mel.shape[1]], mel) and np.all(chunks[0][:, mel.shape[1]:] == -A.MAX_ABS)

    from lipsync_core.sync import SyncOptions, sync
    from tools import sample_media
    from tools.random_weights import write_random_checkpoint

    video = sample_media.write_video(tmp_path / "short.mp4", sample_media.astronaut_frames(3))
    speech = sample_media.speech_wav(tmp_path / "s.wav", seconds=0.12)
    ckpt = write_random_checkpoint(tmp_path / "w.pth")
    result = sync(str(video), str(speech), str(tmp_path / "out.mp4"), str(ckpt),
                  SyncOptions(segments="all", box=(100, 60, 220, 200), cache=False))
    assert result["frames"] == 3 and (tmp_path / "out.mp4").exists()
