"""Masker fine-tuning: cached forward = model forward, frozen weights, determinism, outputs.

Small models (96x96 inputs, 3x3 layer4 maps) keep the whole module to seconds; the maths is
size-free. The CLI tests cover the registry's 400x400 path.
"""

from __future__ import annotations

import copy
import json
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lfm_deploy.data import EmptyMaskWarning, make_support_folder, make_synthetic_dataset
from lfm_deploy.errors import DataError
from lfm_deploy.finetune import trainer
from lfm_deploy.finetune.trainer import (
    MASKER_PREFIXES,
    CachedSupportForward,
    FinetuneError,
    finetune_domain,
    finetune_masker,
    init_masker,
    load_support_set,
    log_path_for,
    pair_schedule,
)
from lfm_deploy.models import build_model, load_masker, read_masker
from lfm_deploy.utils.outputs import FILE_MODE

SIZE = 96


@pytest.fixture(scope="module")
def base_model():
    model, _ = build_model(apm="m", acpa=True, image_size=SIZE)
    return model


@pytest.fixture
def model(base_model):
    return copy.deepcopy(base_model)


@pytest.fixture(scope="module")
def support(data_root):
    return load_support_set("deepglobe", data_root=data_root, shots=1, image_size=SIZE)


def _masker(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(MASKER_PREFIXES)}


def _support_loss(model, support):
    """Mean cross-entropy of each support image predicted from itself, with the full model."""
    images = torch.from_numpy(support.images)
    masks = torch.from_numpy(support.masks).float()
    with torch.no_grad():
        logits = model(images, images, masks)
    return F.cross_entropy(logits, masks.long()).item()


# ----------------------------------------------------------------------------------------------
# Cached forward pass and pairs


@pytest.mark.parametrize("apm,acpa", [("m", True), ("s", False), (None, True)])
def test_cached_forward_equals_model_forward(apm, acpa):
    model, _ = build_model(apm=apm, acpa=acpa, image_size=SIZE)
    init_masker(model, seed=3)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, SIZE, SIZE, generator=gen)
    masks = (torch.rand(3, SIZE, SIZE, generator=gen) > 0.5).float()
    pairs = [(0, 0), (1, 2), (2, 1)]
    cached = CachedSupportForward(model, images, masks).logits(pairs)
    with torch.no_grad():
        direct = torch.cat([model(images[q : q + 1], images[s : s + 1], masks[s : s + 1]) for q, s in pairs])
    torch.testing.assert_close(cached.detach(), direct, rtol=1e-5, atol=1e-6)


def test_pair_schedule_self_pairs_and_round_robin():
    # One image: it is its own support.
    assert pair_schedule([0], 3, 1) == [[(0, 0)]] * 3
    # Three images of one class: each round uses every image once as query; two rounds cover
    # every ordered pair once.
    rounds = pair_schedule([0, 0, 0], 2, 3)
    assert [q for q, _ in rounds[0]] == [0, 1, 2]
    assert sorted(p for r in rounds for p in r) == sorted((q, s) for q in range(3) for s in range(3) if q != s)
    # Pairs never cross classes; a class with one image pairs with itself.
    schedule = pair_schedule([0, 1, 1, 2], 5, 3)
    classes = [0, 1, 1, 2]
    assert all(classes[q] == classes[s] for it in schedule for q, s in it)
    assert (0, 0) in schedule[0] and (3, 3) in schedule[1]
    assert all(len(it) == 3 for it in schedule)


# ----------------------------------------------------------------------------------------------
# Training


def test_finetuning_lowers_the_support_loss(model, support):
    before = _support_loss(model, support)
    result = finetune_masker(
        model, support.images, support.masks, class_ids=support.class_ids, iterations=4, lr=0.1, progress=False
    )
    assert len(result.losses) == 4 and result.num_images == 6 and result.num_pairs == 6
    # 1 shot per class: every iteration sees the same six self-pairs, so the curve is comparable.
    assert all(b < a for a, b in zip(result.losses, result.losses[1:])), result.losses
    assert result.last_loss < result.first_loss - 3e-5
    # The training loss starts where the full model's loss on the support set is...
    assert result.first_loss == pytest.approx(_support_loss_after_reset(model, support), abs=1e-5)
    # ...and the full model's support loss is lower afterwards.
    assert _support_loss(model, support) < before


def _support_loss_after_reset(model, support):
    fresh = copy.deepcopy(model)
    init_masker(fresh, seed=0)
    return _support_loss(fresh, support)


def test_only_the_masker_changes(model, support):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    finetune_masker(
        model, support.images, support.masks, class_ids=support.class_ids, iterations=2, lr=0.1, progress=False
    )
    after = model.state_dict()
    frozen = [k for k in before if not k.startswith(MASKER_PREFIXES)]
    assert len(frozen) > 300  # backbone, BN buffers and learner
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    for key in ("apm.mask_amplitude", "apm.mask_phase", "acpa.phase_attn.0.weight", "acpa.phase_attn.2.weight"):
        assert not torch.equal(before[key], after[key]), key
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not model.training and not model.backbone.training


def test_bit_for_bit_repeatable_and_seed_dependent(base_model, support):
    runs = []
    for seed in (0, 0, 1):
        model = copy.deepcopy(base_model)
        rng = torch.random.get_rng_state()
        result = finetune_masker(
            model, support.images, support.masks, class_ids=support.class_ids, iterations=3, lr=0.1, seed=seed,
            progress=False,
        )
        assert torch.equal(torch.random.get_rng_state(), rng)  # the global RNG is left alone
        runs.append((result.losses, _masker(model)))
    (loss_a, mask_a), (loss_b, mask_b), (loss_c, mask_c) = runs
    assert loss_a == loss_b
    assert all(torch.equal(mask_a[k], mask_b[k]) for k in mask_a)
    # The seed draws ACPA's starting weights: another seed, another run.
    assert loss_a != loss_c
    assert not torch.equal(mask_a["acpa.phase_attn.0.weight"], mask_c["acpa.phase_attn.0.weight"])


def test_results_do_not_depend_on_the_feature_cache(base_model, data_root):
    two_shot = load_support_set("deepglobe", data_root=data_root, shots=2, image_size=SIZE)
    results = []
    for cache_bytes in (2 << 30, 0):  # everything cached / everything recomputed
        model = copy.deepcopy(base_model)
        result = finetune_masker(
            model, two_shot.images, two_shot.masks, class_ids=two_shot.class_ids, iterations=2, lr=0.1,
            pairs_per_iteration=4, cache_bytes=cache_bytes, progress=False,
        )
        results.append((result.losses, _masker(model)))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(results[0][1][k], results[1][1][k]) for k in results[0][1])


def test_reset_false_continues_from_the_current_masker(model, support):
    with torch.no_grad():
        model.apm.mask_amplitude.fill_(-2.0)
    finetune_masker(model, support.images, support.masks, iterations=1, lr=1e-3, reset=False, progress=False)
    assert model.apm.mask_amplitude.mean().item() < -1.5  # not reset to ones


def test_finetune_masker_argument_checks(model, support):
    with pytest.raises(ValueError, match="support_images"):
        finetune_masker(model, support.images[:, :, :64], support.masks, iterations=1, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        finetune_masker(model, support.images, support.masks, iterations=1, lr=0.0)
    with pytest.raises(FinetuneError, match="optimizer"):
        finetune_masker(model, support.images, support.masks, iterations=1, lr=0.1, optimizer="lbfgs", progress=False)
    plain, _ = build_model(apm=None, acpa=False, image_size=SIZE)
    with pytest.raises(FinetuneError, match="no masker"):
        finetune_masker(plain, support.images, support.masks, iterations=1, lr=0.1)


def test_diverging_loss_is_a_user_error(model, support):
    images = support.images.copy()
    images[0, 0, 0, 0] = np.nan
    with pytest.raises(FinetuneError, match="the loss became nan at iteration 1 of 2 with learning rate 0.1") as info:
        finetune_masker(model, images, support.masks, iterations=2, lr=0.1, progress=False)
    assert str(info.value).endswith("pass a smaller lr= (e.g. 0.01)")
    assert info.value.cli_message().endswith("pass a smaller --lr (e.g. --lr 0.01)")


def test_non_finite_weights_are_refused_and_the_masker_put_back(model, support, monkeypatch):
    # A step that leaves a weight infinite while the loss before it was finite.
    class Overflowing(torch.optim.SGD):
        def step(self, closure=None):
            super().step(closure)
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")  # apm.mask_amplitude

    monkeypatch.setattr(trainer, "_make_optimizer", lambda name, params, lr: Overflowing(params, lr=lr))
    before, flags = _masker(model), [p.requires_grad for p in model.parameters()]
    with pytest.raises(FinetuneError, match=r"masker weights became non-finite \(apm.mask_amplitude\) at "
                                            r"iteration 1 of 3 with learning rate 0.1") as info:
        finetune_masker(model, support.images, support.masks, iterations=3, lr=0.1, reset=False, progress=False)
    assert info.value.cli_message().endswith("--lr 0.01)") and str(info.value).endswith("lr= (e.g. 0.01)")
    after = _masker(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model holds no non-finite weight
    assert [p.requires_grad for p in model.parameters()] == flags


def test_a_step_beyond_float32_is_a_user_error(model, support):
    # 3e38 is a float32, but Adam's first step size lr / (1 - 0.9) is not.
    with pytest.raises(FinetuneError, match="optimizer step overflowed float32.* iteration 1 of 1"):
        finetune_masker(model, support.images, support.masks, iterations=1, lr=3e38, progress=False)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -1.0])
def test_lr_must_be_a_finite_positive_number(model, support, lr):
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        finetune_masker(model, support.images, support.masks, iterations=1, lr=lr, progress=False)


def test_finetune_domain_saves_nothing_when_training_diverges(data_root, tmp_path):
    out = tmp_path / "out" / "m.safetensors"
    with pytest.raises(FinetuneError, match="the loss became nan at iteration 2 of 3"):
        finetune_domain("deepglobe", data_root=data_root, iterations=3, lr=1e37, out=out, image_size=SIZE,
                        progress=False)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Support sets


def test_support_set_from_the_dataset_takes_the_first_images_of_each_class(data_root):
    two = load_support_set("deepglobe", data_root=data_root, shots=2, image_size=SIZE)
    assert two.images.shape == (12, 3, SIZE, SIZE) and two.masks.shape == (12, SIZE, SIZE)
    assert two.class_ids == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert two.files[0][0].endswith("Deepglobe/1/test/origin/100000_sat.jpg")
    assert two.files[1][0].endswith("Deepglobe/1/test/origin/100001_sat.jpg")
    assert set(np.unique(two.masks)) <= {0, 1}


def test_support_set_arguments(data_root, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        load_support_set("deepglobe")
    with pytest.raises(ValueError, match="exactly one"):
        load_support_set("deepglobe", data_root=data_root, support=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_support_set("deepglobe", data_root=tmp_path / "missing")


def test_empty_support_masks_warn_and_all_empty_is_an_error(tmp_path):
    pairs = make_support_folder(tmp_path / "sup", count=2, size=32)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(pairs[0].mask)
    with pytest.warns(EmptyMaskWarning, match="no foreground"):
        loaded = load_support_set("deepglobe", support=tmp_path / "sup", image_size=SIZE)
    assert loaded.empty_masks == [str(pairs[0].mask)] and len(loaded) == 2
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(pairs[1].mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyMaskWarning)
        with pytest.raises(DataError, match="every support mask"):
            load_support_set("deepglobe", support=tmp_path / "sup", image_size=SIZE)


# ----------------------------------------------------------------------------------------------
# One domain end to end: files, metadata, loading back


def test_finetune_domain_writes_a_loadable_masker_and_a_log(data_root, tmp_path):
    out = tmp_path / "out" / "masker-deepglobe.safetensors"
    result = finetune_domain(
        "deepglobe", data_root=data_root, iterations=2, lr=0.1, seed=5, out=out, image_size=SIZE, progress=False
    )
    assert result.masker_path == out and out.is_file()
    assert result.log_path == log_path_for(out) == tmp_path / "out" / "masker-deepglobe.finetune.json"
    written = sorted(p.name for p in out.parent.iterdir())
    assert written == ["masker-deepglobe.finetune.json", "masker-deepglobe.safetensors"]  # no .partial left
    assert stat.S_IMODE(out.stat().st_mode) == FILE_MODE  # ordinary permissions, not safetensors' 0600

    tensors, meta = read_masker(out)
    assert set(tensors) == {
        "apm.mask_amplitude", "apm.mask_phase", "acpa.phase_attn.0.weight", "acpa.phase_attn.2.weight"
    }
    assert meta["domain"] == "deepglobe" and meta["apm"] == "m" and meta["acpa"] == "true"
    assert meta["image_size"] == str(SIZE)
    assert meta["base_sha256"] == "untrained-default" and meta["base_untrained"] == "true"
    extra = json.loads(meta["extra"])
    assert extra["seed"] == 5 and extra["iterations"] == 2 and extra["support_images"] == 6

    # The export stage loads it through build_model(masker=...).
    loaded, info = build_model(apm="m", acpa=True, masker=out, image_size=SIZE)
    assert info.masker == str(out) and info.masker_meta["domain"] == "deepglobe"
    for key, value in tensors.items():
        assert torch.equal(loaded.state_dict()[key], value)
    other, _ = build_model(apm="m", acpa=True, image_size=SIZE)
    assert load_masker(other, out)["domain"] == "deepglobe"

    record = json.loads(result.log_path.read_text())
    assert record["losses"] == result.losses and len(record["losses"]) == 2
    assert record["untrained_base"] is True and record["base_sha256"] == "untrained-default"
    assert record["settings"]["lr"] == 0.1 and record["settings"]["seed"] == 5
    assert record["settings"]["optimizer"] == "adam" and record["settings"]["shots"] == 1
    assert len(record["support_files"]) == 6 and record["support_files"][0]["class"] == "1"
    assert record["timings"]["finetune_seconds"] > 0
    assert record["environment"]["torch"] == torch.__version__


def test_finetune_domain_defaults_come_from_the_registry(tmp_path):
    make_support_folder(tmp_path / "sup", count=2, size=32, grayscale=True)
    result = finetune_domain(
        "lung", support=tmp_path / "sup", iterations=1, apm="s", acpa=False, out=tmp_path / "m.safetensors",
        image_size=SIZE, progress=False,
    )
    assert result.lr == 0.1 and result.optimizer == "adam"  # Chest X-ray's schedule
    assert result.settings["domain"] == "chest_xray" and result.settings["shots"] == "all"
    assert result.num_pairs == 2  # two images of one class: each the other's support
    _, meta = read_masker(result.masker_path)
    assert meta["apm"] == "s" and meta["acpa"] == "false" and meta["domain"] == "chest_xray"


def test_finetune_domain_writes_nothing_on_failure(tmp_path):
    out = tmp_path / "m.safetensors"
    with pytest.raises(DataError):
        finetune_domain("deepglobe", data_root=tmp_path / "missing", out=out, image_size=SIZE, progress=False)
    with pytest.raises(FinetuneError, match="optimizer"):
        finetune_domain("deepglobe", data_root=tmp_path, optimizer="rmsprop", out=out, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_package_import_stays_torch_free():
    code = (
        "import sys; import lfm_deploy.finetune as f; from lfm_deploy.finetune import SegmentationMeter; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "f.finetune_masker; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
