"""Wav2Lip generator: layout, checkpoint loading and refusals, device/precision choice, batched inference."""

import builtins
import warnings

import numpy as np
import pytest
import torch

from lipsync_core import device as dev
from lipsync_core import fast_model
from lipsync_core.composite import Compositor
from lipsync_core.errors import LipsyncError
from lipsync_core.inference import FaceGenerator, default_batch_size
from lipsync_core.model import (
    N_TENSORS,
    Wav2Lip,
    check_state_dict,
    describe_problems,
    expected_shapes,
    load_model,
)
from tools.random_weights import cached_random_model, reference_predict, shared_checkpoint, write_random_checkpoint


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return shared_checkpoint(tmp_path_factory, "official")


@pytest.fixture(scope="module")
def model(official):
    return load_model(official)


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    mels = rng.normal(-1.0, 1.5, (n, 80, 16)).astype(np.float32)
    faces = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    return mels, faces


class CodeCarrier:
    """Unpickling this would call open(path, "w"), creating the file: a harmless stand-in for real malware."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


# -- layout ----------------------------------------------------------------------------------------------


def test_state_dict_matches_the_official_layout():
    with torch.device("meta"):
        net = Wav2Lip()
    state = net.state_dict()
    assert len(state) == N_TENSORS == 352
    assert sum(p.numel() for p in net.parameters()) == 36_298_035
    assert {k.split(".")[0] for k in state} == {
        "face_encoder_blocks", "audio_encoder", "face_decoder_blocks", "output_block"}
    # Spot checks against the reference layout, including the transposed convs' (in, out, k, k) weights.
    assert state["face_encoder_blocks.0.0.conv_block.0.weight"].shape == (16, 6, 7, 7)
    assert state["audio_encoder.12.conv_block.1.num_batches_tracked"].shape == ()
    assert state["face_decoder_blocks.1.0.conv_block.0.weight"].shape == (1024, 512, 3, 3)
    assert state["face_decoder_blocks.6.2.conv_block.1.running_var"].shape == (64,)
    assert state["output_block.1.weight"].shape == (3, 32, 1, 1)
    assert "output_block.1.bias" in state and "output_block.2.weight" not in state
    assert expected_shapes() == {k: tuple(v.shape) for k, v in state.items()}


def test_forward_shape_and_range(model):
    with torch.no_grad():
        out = model(torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96))
    assert out.shape == (2, 3, 96, 96)
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.std() > 0.05  # spread, not saturated


# -- loading ---------------------------------------------------------------------------------------------


def test_official_file_layout(official):
    raw = torch.load(official, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "optimizer", "global_step", "global_epoch"}
    assert all(k.startswith("module.") for k in raw["state_dict"]) and len(raw["state_dict"]) == 352
    assert set(raw["optimizer"]) == {"state", "param_groups"}


def test_official_bare_and_legacy_round_trip(tmp_path_factory, model):
    bare = shared_checkpoint(tmp_path_factory, "bare")
    legacy = write_random_checkpoint(tmp_path_factory.mktemp("legacy") / "w.pth", legacy_format=True)
    want = cached_random_model(0).state_dict()
    for net in (model, load_model(bare), load_model(legacy)):
        assert not net.training
        got = net.state_dict()
        assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    legacy.unlink()
    mel, faces = torch.randn(1, 1, 80, 16), torch.rand(1, 6, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(mel, faces), load_model(bare)(mel, faces))


def test_exports_without_bn_counters_or_in_half_precision_load(tmp_path, model):
    """Some re-exports drop num_batches_tracked or store fp16; both load as float32 with every value kept."""
    state = model.state_dict()
    torch.save({k: v for k, v in state.items() if "num_batches" not in k}, tmp_path / "no_counters.pth")
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "half.pth")
    for name in ("no_counters.pth", "half.pth"):
        loaded = load_model(tmp_path / name)
        assert not any(t.is_meta for t in loaded.state_dict().values())
        for key, value in loaded.state_dict().items():
            if value.is_floating_point():
                assert value.dtype == torch.float32
                assert torch.equal(value, state[key] if name == "no_counters.pth" else state[key].half().float())


def test_wrong_architecture_is_named(tmp_path):
    # A SyncNet-like net: different module names, so everything is missing or unexpected.
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    torch.save({"state_dict": {"module.face_encoder." + k: v for k, v in other.state_dict().items()}},
               tmp_path / "syncnet.pth")
    with pytest.raises(LipsyncError) as err:
        load_model(tmp_path / "syncnet.pth")
    text = str(err.value)
    assert "not a Wav2Lip generator checkpoint" in text
    assert "352 tensors missing" not in text and "302 tensors missing" in text  # 50 num_batches_tracked optional
    assert "face_encoder_blocks.0.0.conv_block.0.weight" in text
    assert "unexpected (face_encoder.0.weight" in text
    assert "Traceback" not in text


def test_mis_shaped_tensor_is_named():
    state = {k: torch.empty(s, device="meta") for k, s in expected_shapes().items()}
    state["output_block.1.weight"] = torch.empty(3, 16, 1, 1)
    problems = check_state_dict(state)
    assert problems["mismatched"] == [("output_block.1.weight", (3, 16, 1, 1), (3, 32, 1, 1))]
    assert not problems["missing"] and not problems["unexpected"]
    assert "output_block.1.weight [3, 16, 1, 1] != [3, 32, 1, 1]" in describe_problems(problems, "x.pth")


@pytest.mark.parametrize("legacy", [False, True])
def test_code_carrying_pickle_is_refused_and_not_run(tmp_path, legacy):
    payload = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "x": CodeCarrier(payload)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(LipsyncError) as err:
        load_model(path)
    assert not payload.exists()
    assert "not a plain weights file" in str(err.value) and "carries code" in str(err.value)


def test_a_checkpoint_that_runs_a_command_is_named_for_what_it_is(code_carrying_checkpoint):
    """torch 2.13 words this refusal "unsupported GLOBAL posix.system ... is blocked": whatever the wording, the
    user must hear that the file carries code, not that it is corrupt and should be downloaded again."""
    path, marker = code_carrying_checkpoint
    with pytest.raises(LipsyncError) as err:
        load_model(path)
    assert not marker.exists()
    assert "carries code" in str(err.value) and "not loaded" in str(err.value)
    assert "corrupt" not in str(err.value) and "re-download" not in str(err.value)


def test_code_is_found_in_the_pickle_whatever_torch_says(code_carrying_checkpoint, official, tmp_path):
    from lipsync_core.model import _carries_code

    path, _ = code_carrying_checkpoint
    assert _carries_code(path, "Weights only load failed (worded some new way)")
    assert not _carries_code(official, "Weights only load failed (worded some new way)")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(official.read_bytes()[:5000])
    assert not _carries_code(broken, "Weights only load failed (worded some new way)")


def test_unreadable_files_are_refused(tmp_path, official):
    data = official.read_bytes()
    cases = {
        "truncated.pth": data[: len(data) // 2],
        "empty.pth": b"",
        "page.pth": b"<!DOCTYPE html><html>Sign in</html>",
        "head.pth": data[:100],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(LipsyncError, match="re-download it") as err:
            load_model(tmp_path / name)
        assert "Traceback" not in str(err.value)
    with pytest.raises(LipsyncError, match="web page"):
        load_model(tmp_path / "page.pth")
    with pytest.raises(LipsyncError, match="does not exist"):
        load_model(tmp_path / "nothing.pth")


# -- device and precision --------------------------------------------------------------------------------


def test_pick_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    assert dev.pick_device("auto") == torch.device("cpu")
    assert dev.pick_device(None) == torch.device("cpu")
    assert dev.pick_device("CPU") == torch.device("cpu")
    for name in ("cuda", "cuda:1", "mps"):
        with pytest.raises(LipsyncError, match="auto or cpu"):
            dev.pick_device(name)
    with pytest.raises(LipsyncError, match="Unknown device"):
        dev.pick_device("gpu please")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dev.pick_device("auto") == torch.device("cuda")
    with pytest.raises(LipsyncError, match="1 CUDA GPU"):
        dev.pick_device("cuda:3")


def test_pick_precision(monkeypatch):
    monkeypatch.delenv("LIPSYNC_PRECISION", raising=False)
    for device in ("cuda", "cpu", "mps"):
        assert dev.pick_precision(device) is None  # not forced: fp32, then the first-batch rule
    monkeypatch.setenv("LIPSYNC_PRECISION", "fp32")
    assert dev.pick_precision("cuda") == dev.FP32
    monkeypatch.setenv("LIPSYNC_PRECISION", "bf16")
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert dev.pick_precision("cpu") == dev.Precision(torch.bfloat16)
    monkeypatch.setenv("LIPSYNC_PRECISION", "bf16-decoder")
    p = dev.pick_precision("cpu")
    assert p == dev.Precision(torch.bfloat16, decoder_only=True) and p.name == "bf16-decoder"
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="not supported"):
        assert dev.pick_precision("cpu") == dev.FP32
    monkeypatch.setenv("LIPSYNC_PRECISION", "fp16")
    with pytest.warns(UserWarning):
        assert dev.pick_precision("cpu") == dev.FP32
    for bad in ("fp8", "bf16-encoder"):
        monkeypatch.setenv("LIPSYNC_PRECISION", bad)
        with pytest.raises(LipsyncError, match="fp32, bf16, fp16, bf16-decoder, fp16-decoder"):
            dev.pick_precision("cpu")
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert dev.pick_precision("cpu", override="bfloat16") == dev.Precision(torch.bfloat16)
    # what the first batch judges, fastest first
    assert [p.name for p in dev.faster_precisions("cpu")] == ["bf16", "bf16-decoder"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [p.name for p in dev.faster_precisions("cuda")] == ["fp16", "fp16-decoder"]
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    assert dev.faster_precisions("cpu") == [] and dev.faster_precisions("mps") == []


# -- inference -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [True, False])
def test_input_is_built_like_the_reference(model, channels_last):
    mels, faces = batch(3)
    gen = FaceGenerator(model, "cpu", torch.float32, channels_last=channels_last)
    mel, x = gen.make_inputs(mels, faces)

    # The reference inference.py, step by step: masked copy FIRST, float64 /255, then FloatTensor NCHW.
    masked = faces.copy()
    masked[:, 96 // 2:] = 0
    ref = np.concatenate((masked, faces), axis=3) / 255.0
    ref_x = torch.FloatTensor(np.transpose(ref, (0, 3, 1, 2)))
    ref_mel = torch.FloatTensor(np.transpose(np.reshape(mels, [3, 80, 16, 1]), (0, 3, 1, 2)))
    assert x.dtype == torch.float32 and torch.equal(x, ref_x)  # bit for bit
    assert torch.equal(mel, ref_mel)
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.all(x[:, :3, 48:] == 0) and torch.all(x[:, 3:, 48:] == ref_x[:, 3:, 48:])


def test_fp32_predict_matches_reference(official):
    mels, faces = batch(2, seed=1)
    want = reference_predict(load_model(official), mels, faces)
    for channels_last in (False, True):
        got = FaceGenerator(load_model(official), "cpu", torch.float32, channels_last=channels_last).predict(
            mels, faces)
        assert got.shape == (2, 96, 96, 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - want.astype(int))
        # Only float summation order differs (the reference's FloatTensor keeps numpy's NHWC strides, so
        # its first conv already runs channels_last while its weights do not): a handful of 1-level flips.
        assert diff.max() <= 1, diff.max()
        assert np.mean(diff > 0) < 1e-3


@pytest.mark.skipif(not dev.cpu_has_native_bf16(), reason="CPU has no native bf16: emulated bf16 is too slow")
def test_bf16_close_to_fp32(model):
    """bf16 keeps 8 mantissa bits; over 50 layers that moves some outputs by several /255 (measured max 17,
    mean ~1.3 with this random checkpoint). That is why bf16 is opt-in on CPUs; this guards the bf16 path
    against gross errors (wrong casts, wrong scaling), which would show as tens of levels on average."""
    mels, faces = batch(4, seed=2)
    fp32 = FaceGenerator(model, "cpu", torch.float32).predict(mels, faces).astype(int)
    bf16 = FaceGenerator(model, "cpu", torch.bfloat16).predict(mels, faces).astype(int)
    diff = np.abs(bf16 - fp32)
    print(f"bf16 vs fp32: max {diff.max()}/255, mean {diff.mean():.3f}/255, >1/255 on {np.mean(diff > 1):.1%}")
    assert diff.mean() <= 2.5 and diff.max() <= 40
    assert np.mean(diff <= 1) > 0.5


@pytest.mark.skipif(not dev.cpu_has_native_bf16(), reason="CPU has no native bf16: emulated bf16 is too slow")
def test_bf16_decoder_keeps_the_encoders_and_output_in_fp32():
    """bf16-decoder: the decoder's weights are a bf16 copy, the encoders' and output layer's stay the fp32
    model's own (shared, not copied); on trained-like weights with real face crops and speech it moves the
    output far less than bf16 throughout; building it leaves the fp32 network's numbers untouched."""
    from tools.random_weights import face_and_speech_batch, trained_like_model

    net = fast_model.FastWav2Lip(trained_like_model(0, spread=0.1), first_row=47)
    mel, x = face_and_speech_batch(8)
    with torch.inference_mode():
        fp32 = net(mel, x)
        whole = net.lowered(torch.bfloat16)
        part = net.lowered(torch.bfloat16, decoder_only=True)
        assert part.face_encoder_blocks is net.face_encoder_blocks and part.output_block is net.output_block
        assert part.face_decoder_blocks is not net.face_decoder_blocks
        assert next(part.face_decoder_blocks.parameters()).dtype == torch.bfloat16
        assert next(net.face_decoder_blocks.parameters()).dtype == torch.float32
        assert part.stage_dtypes == (torch.float32, torch.bfloat16, torch.float32)
        d_whole = 255 * (whole(mel, x).float() - fp32).abs()
        d_part = 255 * (part(mel, x).float() - fp32).abs()
        assert torch.equal(net(mel, x), fp32)
    print(f"bf16 max {d_whole.max():.2f} mean {d_whole.mean():.3f}; bf16-decoder max {d_part.max():.2f} "
          f"mean {d_part.mean():.3f} (/255)")
    assert 0 < d_part.max() < d_whole.max() / 2 and d_part.mean() < d_whole.mean() / 2
    # the generator switches between them; the fp32 network is kept throughout
    gen = FaceGenerator(trained_like_model(0, spread=0.1), "cpu", first_row=47)
    mels, faces = batch(4, seed=3)
    a = gen.predict(mels, faces)
    gen.precision = dev.Precision(torch.bfloat16, decoder_only=True)
    b = gen.predict(mels, faces)
    gen.precision = dev.FP32
    assert np.array_equal(gen.predict(mels, faces), a) and not np.array_equal(a, b)


# -- the inference rewrite: BN folded, only the rows the blend reads ------------------------------------


@pytest.mark.parametrize("first_row", [0, 1, 2, 7, 30, 45, 47, 80, 95])
def test_fast_model_rows_equal_the_full_network(model, first_row):
    mels, faces = batch(3, seed=4)
    mel = torch.from_numpy(mels)[:, None]
    x = torch.from_numpy(np.concatenate((faces, faces), axis=3).transpose(0, 3, 1, 2) / 255.0).float()
    with torch.inference_mode():
        full = model(mel, x)
        fast = fast_model.FastWav2Lip(model, first_row)(mel, x)
    assert fast.shape == (3, 3, 96 - first_row, 96)
    assert (fast - full[:, :, first_row:]).abs().max() < 1e-4  # float rounding of the folded weights only


def test_a_band_one_row_short_is_caught(model, monkeypatch):
    """The exactness above depends on row_plan's margins: starting any banded stage one row later is visibly
    wrong, so the test above would catch a plan that cut too close."""
    plan = fast_model.row_plan
    mels, faces = batch(2, seed=5)
    mel = torch.from_numpy(mels)[:, None]
    x = torch.from_numpy(np.concatenate((faces, faces), axis=3).transpose(0, 3, 1, 2) / 255.0).float()
    with torch.inference_mode():
        full = model(mel, x)[:, :, 47:]
        for block in (2, 3, 4, 5, 6):
            monkeypatch.setattr(fast_model, "row_plan", lambda r, res, b=block: {
                k: v + (k == b) for k, v in plan(r, res).items()})
            assert (fast_model.FastWav2Lip(model, 47)(mel, x) - full).abs().max() > 1e-3, block


def test_generator_band_keeps_input_rows_above(model):
    mels, faces = batch(3, seed=6)
    whole = FaceGenerator(model, "cpu", torch.float32).predict(mels, faces)
    band = FaceGenerator(model, "cpu", torch.float32, first_row=45).predict(mels, faces)
    assert band.shape == whole.shape == (3, 96, 96, 3)
    assert np.array_equal(band[:, :45], faces[:, :45])
    assert np.abs(band[:, 45:].astype(int) - whole[:, 45:]).max() <= 1


@pytest.mark.parametrize("interpolation", ["INTER_LINEAR", "INTER_CUBIC", "INTER_LANCZOS4", "INTER_NEAREST"])
def test_compositor_reads_no_row_above_first_row_used(interpolation):
    """Whatever the generator leaves above first_row_used() never reaches the frame, at any box size; with
    linear resizing the row at first_row_used() does reach it for some size (the margin is not too wide)."""
    import cv2

    comp = Compositor("feather", interpolation=getattr(cv2, interpolation))
    first = comp.first_row_used()
    assert 40 <= first <= 47
    rng = np.random.default_rng(7)
    face = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    frame = rng.integers(0, 256, (460, 460, 3), dtype=np.uint8)
    leaked_below = False
    sizes = [(w, h) for h in range(8, 401) for w in (h, 37 + h % 50)]  # every height, square and not
    for w, h in sizes:
        box = (20, 30, 20 + w, 30 + h)
        want = comp.paste(frame.copy(), face, box)
        junk = face.copy()
        junk[:first] = 255 - junk[:first]
        assert np.array_equal(comp.paste(frame.copy(), junk, box), want), (w, h)
        junk = face.copy()
        junk[: first + 1] = 255 - junk[: first + 1]
        leaked_below |= not np.array_equal(comp.paste(frame.copy(), junk, box), want)
    if interpolation == "INTER_LINEAR":  # the engine's; elsewhere the first row's weight can round to nothing
        assert leaked_below
    assert Compositor("box").first_row_used() == 0


def test_predict_edge_cases(model):
    gen = FaceGenerator(model, "cpu", torch.float32)
    assert gen.predict(np.zeros((0, 80, 16), np.float32), np.zeros((0, 96, 96, 3), np.uint8)).shape == (
        0, 96, 96, 3)
    mels, faces = batch(2)
    with pytest.raises(ValueError, match="uint8"):
        gen.predict(mels, faces.astype(np.float32))
    with pytest.raises(ValueError, match="2 mel windows for 1 faces"):
        gen.predict(mels, faces[:1])
    with pytest.raises(ValueError, match=r"\(B, 96, 96, 3\)"):
        gen.predict(mels, faces[:, :48])
    # float64 mels (librosa's default) are accepted and cast like the reference's FloatTensor.
    a = gen.predict(mels.astype(np.float64), faces)
    b = gen.predict(mels, faces)
    assert np.array_equal(a, b)
    assert default_batch_size("cpu") == 32 and default_batch_size("cuda") >= 64


def test_no_warnings_on_load(official):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(official)
