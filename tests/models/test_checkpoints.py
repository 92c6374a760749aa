"""Checkpoint loading: upstream layouts, masker files, and every error case."""

from __future__ import annotations

import logging
import pickle
import stat

import pytest
import torch

from lfm_deploy.errors import CheckpointError
from lfm_deploy.models import LFMHSNet, build_model, load_checkpoint, load_masker, read_masker, save_masker
from lfm_deploy.models.backbone import ResNet50
from lfm_deploy.utils.outputs import FILE_MODE


def _hsnet_state(seed=7):
    """An upstream-style HSNet state dict (backbone incl. fc + learner), with random values."""
    torch.manual_seed(seed)
    model = LFMHSNet(apm=None, acpa=False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.state_dict()


@pytest.fixture(scope="module")
def upstream_ckpt(tmp_path_factory):
    """Saved like upstream: torch.save(nn.DataParallel(model).state_dict()) -> `module.` keys."""
    state = _hsnet_state()
    path = tmp_path_factory.mktemp("ckpt") / "best_model.pt"
    torch.save({"module." + k: v for k, v in state.items()}, path)
    return path, state


def _assert_same(model, state, prefix=""):
    sd = model.state_dict()
    for k, v in state.items():
        assert torch.equal(sd[prefix + k], v), k


def test_upstream_dataparallel_checkpoint_loads_unchanged(upstream_ckpt):
    path, state = upstream_ckpt
    assert len(state) == 418  # HSNet-R50 upstream key count
    model, info = build_model(apm="m", acpa=True, checkpoint=path)
    _assert_same(model, state)
    assert not info.untrained and info.checkpoint_kind == "hsnet" and len(info.checkpoint_sha256) == 64
    # The masker keeps its official initialisation.
    assert torch.all(model.apm.mask_amplitude == 1)


def test_torchvision_resnet_file_fills_backbone_only(tmp_path, caplog):
    torch.manual_seed(0)
    net = ResNet50()
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(net.state_dict(), path)
    with caplog.at_level(logging.WARNING):
        model, info = build_model(apm="s", acpa=False, checkpoint=path)
    _assert_same(model, net.state_dict(), prefix="backbone.")
    assert info.untrained and info.checkpoint_kind == "resnet50"
    assert "learner keeps its untrained" in caplog.text


def test_full_official_state_with_masker_and_shift_conversion(tmp_path, upstream_ckpt):
    _, state = upstream_ckpt
    full = dict(state)
    ma = torch.randn(1, 2048, 13, 13)
    full["apm.mask_amplitude"], full["apm.mask_phase"] = ma, torch.randn(1, 2048, 13, 13)
    full["acpa.phase_attn.0.weight"], full["acpa.phase_attn.2.weight"] = torch.randn(8, 2048), torch.randn(2048, 8)
    path = tmp_path / "lfm.pt"
    torch.save({"module." + k: v for k, v in full.items()}, path)
    plain, _ = build_model(checkpoint=path)
    assert torch.equal(plain.apm.mask_amplitude, ma)
    converted, _ = build_model(checkpoint=path, official_shift=True)
    assert torch.equal(converted.apm.mask_amplitude, torch.roll(ma, 1024, dims=1))
    assert torch.equal(converted.acpa.phase_attn[0].weight, full["acpa.phase_attn.0.weight"])


def test_wrapped_state_dict_is_accepted(tmp_path, upstream_ckpt):
    _, state = upstream_ckpt
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": state}, path)
    model, _ = build_model(apm=None, acpa=False, checkpoint=path)
    _assert_same(model, state)


def test_masker_round_trip_with_metadata(tmp_path, upstream_ckpt):
    ckpt, _ = upstream_ckpt
    model, info = build_model(apm="m", acpa=True, checkpoint=ckpt)
    with torch.no_grad():
        model.apm.mask_phase.normal_()
        model.acpa.phase_attn[2].weight.normal_()
    path = save_masker(model, tmp_path / "masker-deepglobe.safetensors", domain="deepglobe", weights=info, extra={"loss": [1.0, 0.5]})
    assert path.stat().st_size < 6_000_000 and not list(tmp_path.glob("*.partial"))
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE  # 0644 less umask, not safetensors' 0600
    tensors, meta = read_masker(path)
    assert set(tensors) == {"apm.mask_amplitude", "apm.mask_phase", "acpa.phase_attn.0.weight", "acpa.phase_attn.2.weight"}
    assert meta["domain"] == "deepglobe" and meta["apm"] == "m" and meta["acpa"] == "true"
    assert meta["base_sha256"] == info.checkpoint_sha256
    again, info2 = build_model(apm="m", acpa=True, checkpoint=ckpt, masker=path)
    assert torch.equal(again.apm.mask_phase, model.apm.mask_phase)
    assert torch.equal(again.acpa.phase_attn[2].weight, model.acpa.phase_attn[2].weight)
    assert info2.masker == str(path) and info2.masker_meta["domain"] == "deepglobe"


@pytest.mark.slow  # builds the full-size ResNet-50 model (seconds each)
def test_masker_on_other_base_weights_warns(tmp_path, caplog):
    model, info = build_model(apm="s", acpa=False)
    path = save_masker(model, tmp_path / "m.safetensors", domain="isic", weights=info)
    other, other_info = build_model(apm="s", acpa=False, seed=0)
    other_info.checkpoint_sha256 = "f" * 64
    with caplog.at_level(logging.WARNING):
        load_masker(other, path, other_info)
    assert "fine-tuned on base weights" in caplog.text


# --- error cases: one clear CheckpointError each, and nothing partially loaded -------------


def _unchanged(model, before):
    after = model.state_dict()
    return all(torch.equal(after[k], before[k]) for k in before)


def _fresh():
    model = LFMHSNet(apm="m", acpa=True)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def test_missing_file():
    with pytest.raises(CheckpointError, match="not found"):
        build_model(checkpoint="/nonexistent/best_model.pt")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        build_model(checkpoint=path)


def test_truncated_checkpoint(tmp_path, upstream_ckpt):
    src, _ = upstream_ckpt
    path = tmp_path / "truncated.pt"
    path.write_bytes(src.read_bytes()[: 1_000_000])
    with pytest.raises(CheckpointError, match="not a readable"):
        build_model(checkpoint=path)


class _Payload:
    def __reduce__(self):  # would run code if unpickled without weights_only
        return (print, ("unpickled!",))


def test_arbitrary_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError):
        build_model(checkpoint=path)
    assert "unpickled!" not in capsys.readouterr().out


def test_foreign_architecture_lists_keys(tmp_path):
    path = tmp_path / "bert.pt"
    torch.save({"encoder.layer.0.attention.weight": torch.zeros(4, 4), "pooler.dense.bias": torch.zeros(4)}, path)
    with pytest.raises(CheckpointError, match="not an HSNet-ResNet50 or ResNet-50 checkpoint"):
        build_model(checkpoint=path)


def test_patnet_extra_keys_and_missing_learner_keys_are_listed(tmp_path, upstream_ckpt):
    _, state = upstream_ckpt
    patnet = dict(state)
    patnet["reference_layer1.weight"] = torch.zeros(2, 2)
    del patnet["hpn_learner.decoder2.2.bias"]
    path = tmp_path / "patnet.pt"
    torch.save({"module." + k: v for k, v in patnet.items()}, path)
    model, before = _fresh()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path)
    msg = str(err.value)
    assert "1 missing keys: hpn_learner.decoder2.2.bias" in msg and "1 unexpected keys: reference_layer1.weight" in msg
    assert _unchanged(model, before)


def test_shape_mismatch_of_masker_variant(tmp_path, upstream_ckpt):
    _, state = upstream_ckpt
    full = dict(state)
    full["apm.mask_amplitude"] = torch.ones(1, 1, 13, 13)
    full["apm.mask_phase"] = torch.ones(1, 1, 13, 13)
    path = tmp_path / "apm_s.pt"
    torch.save(full, path)
    model, before = _fresh()
    with pytest.raises(CheckpointError, match=r"shape mismatches: apm.mask_amplitude \(1, 1, 13, 13\) vs model \(1, 2048, 13, 13\)"):
        load_checkpoint(model, path)
    assert _unchanged(model, before)


def test_non_finite_weights(tmp_path, upstream_ckpt):
    _, state = upstream_ckpt
    bad = dict(state)
    bad["hpn_learner.decoder1.0.weight"] = bad["hpn_learner.decoder1.0.weight"].clone()
    bad["hpn_learner.decoder1.0.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(bad, path)
    model, before = _fresh()
    with pytest.raises(CheckpointError, match="non-finite"):
        load_checkpoint(model, path)
    assert _unchanged(model, before)


@pytest.mark.slow  # builds the full-size ResNet-50 model (seconds each)
def test_masker_file_passed_as_checkpoint_and_vice_versa(tmp_path, upstream_ckpt):
    model, info = build_model(apm="s", acpa=True)
    masker = save_masker(model, tmp_path / "m.safetensors", domain="isic", weights=info)
    with pytest.raises(CheckpointError, match="as masker="):
        build_model(apm="s", acpa=True, checkpoint=masker)
    ckpt, _ = upstream_ckpt
    with pytest.raises(CheckpointError, match="not a masker file"):
        build_model(apm="s", acpa=True, masker=ckpt)


@pytest.mark.slow  # builds the full-size ResNet-50 model (seconds each)
def test_masker_variant_mismatch(tmp_path):
    model, info = build_model(apm="s", acpa=True)
    path = save_masker(model, tmp_path / "m.safetensors", domain="isic", weights=info)
    with pytest.raises(CheckpointError, match="apm='s', acpa=True") as err:
        build_model(apm="m", acpa=True, masker=path)
    assert "--apm s --acpa" in err.value.cli_message()


@pytest.mark.slow  # builds the full-size ResNet-50 model (seconds each)
def test_default_weights_are_seeded_and_labelled():
    a, info = build_model(apm="s", acpa=True, seed=0)
    b, _ = build_model(apm="s", acpa=True, seed=0)
    c, _ = build_model(apm="s", acpa=True, seed=1)
    assert info.untrained and "UNTRAINED" in info.describe()
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["hpn_learner.decoder2.2.weight"], sc["hpn_learner.decoder2.2.weight"])
    # BatchNorm statistics are calibrated, not the fresh (0, 1).
    assert sa["backbone.bn1.running_var"].std() > 0
    # Building the default leaves the global RNG alone.
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    build_model(apm=None, acpa=False)
    assert torch.equal(torch.rand(1), expected)
