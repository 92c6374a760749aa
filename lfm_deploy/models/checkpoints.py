"""Loading and saving weights: upstream HSNet checkpoints, torchvision ResNet-50 files, full
LFM state dicts and the project's small per-domain masker files.

Everything is read on the CPU with `weights_only=True` (never unpickling arbitrary objects),
validated completely (missing and unexpected keys, shapes, finiteness) and only then copied
into the model, so a bad file never leaves a half-loaded model behind.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..manifest import SYNTHETIC_LABEL, SYNTHETIC_SOURCE, UNTRAINED_LABEL, sha256_file
from ..utils.files import MAX_CHECKPOINT_BYTES, MAX_MASKER_BYTES, regular_file
from ..utils.outputs import atomic_write_bytes, safetensors_metadata
from .hsnet import LFMHSNet
from .masker import official_to_spatial_shift

log = logging.getLogger(__name__)

MASKER_FORMAT = "lfm-deploy-masker"
MASKER_FORMAT_VERSION = 1
#: Seed of the built-in default weights (the untrained ones and the synthetic-data default's backbone).
DEFAULT_SEED = 0
#: `WeightsInfo.source` of the seeded untrained default (the synthetic-data default's is `SYNTHETIC_SOURCE`).
UNTRAINED_SOURCE = "untrained-default"
_MAX_LISTED = 8


@dataclass
class WeightsInfo:
    """Where a model's weights came from; written into logs, reports and manifests.

    `untrained` is true for everything that is not a real trained model: the seeded untrained
    default, a backbone-only file, and the synthetic-data default (`source` "synthetic-default",
    whose learner file and training recipe are named by `learner`, `learner_sha256`, `recipe`).
    """

    source: str = UNTRAINED_SOURCE
    untrained: bool = True
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    checkpoint_kind: str | None = None
    masker: str | None = None
    masker_sha256: str | None = None
    masker_meta: dict = field(default_factory=dict)
    seed: int | None = DEFAULT_SEED
    learner: str | None = None
    learner_sha256: str | None = None
    recipe: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def synthetic(self) -> bool:
        """Whether these are the synthetic-data default weights."""
        return self.source == SYNTHETIC_SOURCE

    @property
    def label(self) -> str:
        """The warning label of weights that are not a real model ("" for a trained checkpoint)."""
        if self.synthetic:
            return SYNTHETIC_LABEL
        return UNTRAINED_LABEL if self.untrained else ""

    @property
    def base_sha256(self) -> str:
        """What a masker fine-tuned on these weights records as its base: the checkpoint's sha256,
        the synthetic default's learner file's, or "untrained-default"."""
        return self.checkpoint_sha256 or self.learner_sha256 or UNTRAINED_SOURCE

    def describe(self) -> str:
        if self.synthetic:
            base = f"{SYNTHETIC_LABEL}, seed {self.seed}, learner sha256 {(self.learner_sha256 or '?')[:12]}"
        elif self.untrained:
            base = f"{UNTRAINED_LABEL}, seed {self.seed}"
        else:
            base = f"{self.checkpoint_kind} checkpoint {self.checkpoint} (sha256 {self.checkpoint_sha256[:12]})"
        if self.masker:
            base += f"; masker {self.masker}"
        return base


def _listing(keys, limit: int = _MAX_LISTED) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _existing_file(path: str | os.PathLike, what: str, hint: str) -> Path:
    """`path` as a Path when it is a regular file of a plausible size (`utils.files.regular_file`);
    else one CheckpointError saying what it is (an empty path, a directory, a missing file, a
    FIFO or device, also behind a link, and a file too large are different mistakes)."""
    limit = MAX_MASKER_BYTES if what.startswith("masker") else MAX_CHECKPOINT_BYTES
    return regular_file(path, what, limit, error=CheckpointError, hint=hint)


def _looks_like(path: Path) -> str | None:
    """What a file evidently is, from its first bytes, when it is not what was expected
    ("a JPEG image", "a PyTorch checkpoint (torch.save)"), or None when it is not obvious."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if not head:
        return "an empty file"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "a TIFF image"
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
        return "a PyTorch checkpoint (torch.save)"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 << 20:
        return "a safetensors file"
    if path.suffix.lower() == ".onnx":
        return "an ONNX model"
    try:
        text = head.decode("utf-8").lstrip()
    except UnicodeDecodeError:
        return None
    return "a JSON file" if text.startswith(("{", "[")) else "a text file"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely: a `torch.save` file or a `.safetensors` file.

    Accepts a bare state dict or the common wrappers (`{"state_dict": ...}`, `{"model": ...}`).

    Raises:
        CheckpointError: the file is missing, unreadable, or holds no tensors.
    """
    path = _existing_file(path, "checkpoint", "pass the path of an existing file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - safetensors is part of the export extra
            raise CheckpointError("reading .safetensors needs the safetensors package: pip install safetensors") from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path} is not a valid safetensors file ({exc}); re-save or re-download it") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to parse an untrusted file means "not a checkpoint"
        what = _looks_like(path)
        if what is None or what.startswith("a PyTorch"):
            # torch's own text; its first sentence only (the rest suggests weights_only=False).
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            what = first.split(". ")[0][:200]
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({what}); pass a file saved with "
            "torch.save(model.state_dict()) (only tensors are loaded, never arbitrary pickled objects)"
        ) from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict; pass a state-dict checkpoint")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors; pass a model checkpoint")
    dropped = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if dropped:
        raise CheckpointError(f"{path} has non-tensor entries ({_listing(map(str, dropped))}); pass a plain state dict")
    return tensors


def classify_state_dict(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """Recognise a checkpoint's kind and normalise its keys to LFMHSNet's names.

    Returns:
        (kind, state) with kind one of "hsnet" (upstream HSNet, possibly with apm/acpa),
        "resnet50" (torchvision ImageNet backbone), "masker" (apm/acpa only), "unknown".
    """
    if state and all(k.startswith("module.") for k in state):  # nn.DataParallel checkpoints (upstream)
        state = {k[len("module."):]: v for k, v in state.items()}
    keys = set(state)
    if any(k.startswith("hpn_learner.") for k in keys) or any(k.startswith("backbone.") for k in keys):
        return "hsnet", state
    if "conv1.weight" in keys and any(k.startswith("layer4.") for k in keys):
        return "resnet50", {"backbone." + k: v for k, v in state.items()}
    if keys and all(k.startswith(("apm.", "acpa.")) for k in keys):
        return "masker", state
    return "unknown", state


def _merge_checked(model: LFMHSNet, incoming: dict[str, torch.Tensor], required_prefixes, source: str) -> dict:
    """Validate `incoming` against `model` and return the full merged state dict."""
    current = model.state_dict()
    unexpected = [k for k in incoming if k not in current]
    missing = [k for k in current if k.startswith(tuple(required_prefixes)) and k not in incoming]
    mismatched = [
        f"{k} {tuple(v.shape)} vs model {tuple(current[k].shape)}"
        for k, v in incoming.items()
        if k in current and v.shape != current[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_listing(mismatched, 4)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit LFMHSNet({model.variant}): " + "; ".join(problems),
            api_hint="pass an HSNet-ResNet50 checkpoint, or build the matching apm/acpa variant",
            cli_hint="pass an HSNet-ResNet50 checkpoint, or choose the matching --apm/--acpa variant",
        )
    bad = [k for k, v in incoming.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source} has non-finite (NaN/Inf) values in {_listing(bad)}; the file is corrupt")
    merged = dict(current)
    for k, v in incoming.items():
        merged[k] = v.to(dtype=current[k].dtype)
    return merged


def load_checkpoint(model: LFMHSNet, path: str | os.PathLike, official_shift: bool = False) -> WeightsInfo:
    """Load an HSNet checkpoint, a torchvision ResNet-50 file or a full LFM state dict into `model`.

    - upstream HSNet `best_model.pt` (`module.` keys, whole backbone incl. `fc`): fills backbone
      and learner; the masker keeps its current values unless the file carries `apm.*`/`acpa.*`.
    - torchvision ImageNet ResNet-50: fills the backbone only.

    Args:
        model: the model to fill.
        path: the checkpoint file.
        official_shift: the file's APM masks were trained with the official all-dims shift;
            convert them (roll the channel axis by C/2).

    Returns:
        `WeightsInfo` describing the loaded weights.

    Raises:
        CheckpointError: missing/unreadable file, foreign architecture, shape mismatch, NaN/Inf.
    """
    state = read_state_dict(path)
    kind, state = classify_state_dict(state)
    if kind == "unknown":
        raise CheckpointError(
            f"{path} is not an HSNet-ResNet50 or ResNet-50 checkpoint (keys like {_listing(list(state)[:4], 4)}); "
            "pass an upstream HSNet best_model.pt or a torchvision resnet50 file"
        )
    if kind == "masker":
        raise CheckpointError(f"{path} only holds masker weights",
                              api_hint="pass it as masker= instead of checkpoint=",
                              cli_hint="pass it with --masker instead of --checkpoint")
    if kind == "hsnet":
        # Upstream HSNet's backbone includes the unused `fc`; PATNet adds reference layers, which
        # this architecture does not have (reported as unexpected keys).
        required = ["backbone.", "hpn_learner."]
        if any(k.startswith(("apm.", "acpa.")) for k in state):
            required += [p for p, on in (("apm.", model.apm_variant is not None), ("acpa.", model.use_acpa)) if on]
            if official_shift:
                state = official_to_spatial_shift(state)
    else:
        required = ["backbone."]
    merged = _merge_checked(model, state, required, str(path))
    model.load_state_dict(merged, strict=True)
    digest = sha256_file(path)
    log.info("loaded %s checkpoint %s (sha256 %s)", kind, path, digest[:12])
    info = WeightsInfo(
        source=f"{kind} checkpoint", untrained=kind != "hsnet", checkpoint=str(path),
        checkpoint_sha256=digest, checkpoint_kind=kind, seed=None,
    )
    if kind == "resnet50":
        log.warning("%s is a backbone only: the HSNet learner keeps its untrained initialisation", path)
        info.seed = DEFAULT_SEED
    return info


def masker_state(model: LFMHSNet) -> dict[str, torch.Tensor]:
    """The trainable masker's tensors (`apm.*`, `acpa.*`)."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k.startswith(("apm.", "acpa."))}


def save_masker(model: LFMHSNet, path: str | os.PathLike, *, domain: str, weights: WeightsInfo | None = None, extra: dict | None = None) -> Path:
    """Write the masker's weights to a small safetensors file with metadata, atomically.

    Metadata: format, version, domain, variant (apm, acpa), image size, the base checkpoint's
    sha256 (or "untrained-default"), and any `extra` JSON-serialisable entries. The file gets
    ordinary permissions (`lfm_deploy.utils.outputs.atomic_write_bytes`).
    """
    from safetensors.torch import save

    path = Path(path)
    if model.apm_variant is None and not model.use_acpa:
        raise CheckpointError("this model has neither APM nor ACPA: there is no masker to save")
    weights = weights or WeightsInfo()
    meta = {
        "format": MASKER_FORMAT,
        "format_version": str(MASKER_FORMAT_VERSION),
        "domain": domain,
        "apm": model.apm_variant or "none",
        "acpa": "true" if model.use_acpa else "false",
        "image_size": str(model.image_size),
        "base_sha256": weights.base_sha256,
        "base_untrained": "true" if weights.untrained else "false",
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, save(masker_state(model), metadata=meta))


def read_masker(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a masker file: (tensors, metadata). Raises CheckpointError for anything else."""
    path = _existing_file(path, "masker file", "pass the file written by lfm-finetune")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        what = _looks_like(path)
        if what is None or what == "a safetensors file":
            what = str(exc)[:200]
        if what.startswith("a PyTorch"):  # the two files swapped
            raise CheckpointError(f"{path} is not a masker file ({what})",
                                  api_hint="pass it as checkpoint= and the file written by lfm-finetune as masker=",
                                  cli_hint="pass it with --checkpoint and the file written by lfm-finetune with --masker",
                                  ) from None
        raise CheckpointError(f"{path} is not a masker file ({what}); pass the .safetensors file written by lfm-finetune"
                              ) from None
    if meta.get("format") != MASKER_FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an lfm-deploy masker (format={meta.get('format')!r})")
    if int(meta.get("format_version", "0")) > MASKER_FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer lfm-deploy (masker format {meta['format_version']}); upgrade lfm-deploy")
    return tensors, meta


def masker_variant(meta: dict[str, str]) -> tuple[str | None, bool]:
    """(apm, acpa) of a masker file's metadata."""
    apm = meta.get("apm", "none")
    return (None if apm == "none" else apm), meta.get("acpa") == "true"


def check_masker_domain(path, meta: Mapping[str, str], domain: str, use: str = "using it on") -> bool:
    """Warn when a masker file was fine-tuned for another domain than the one it is used on.

    The one check of lfm-eval and lfm-export: a masker learns its domain's spectrum, so
    another domain's is allowed (an experiment) but said. Maskers without a recorded domain
    pass silently.

    Args:
        path: the masker file, for the message.
        meta: its metadata (`read_masker`).
        domain: the domain it is used on.
        use: what is done with it ("evaluating it on", "exporting it for").

    Returns:
        whether the domains match (or the file records none).
    """
    trained_for = meta.get("domain")
    if trained_for in (None, domain):
        return True
    log.warning("masker %s was fine-tuned for %r, %s %r", path, trained_for, use, domain)
    return False


def _check_masker_size(path, meta: dict, image_size: int) -> None:
    """A masker only fits the image size it was fine-tuned at: APM's masks have the shape of the
    layer4 spectrum, which the image size sets."""
    trained_at = meta.get("image_size")
    if trained_at is not None and str(trained_at) != str(image_size):
        raise CheckpointError(
            f"{path} was fine-tuned at {trained_at}x{trained_at} but the model takes {image_size}x{image_size} images",
            api_hint="pass a masker fine-tuned at this image size",
            cli_hint="pass a --masker fine-tuned at this image size (lfm-finetune)",
        )


def load_masker(model: LFMHSNet, path: str | os.PathLike, weights: WeightsInfo | None = None) -> dict[str, str]:
    """Load a masker file into `model` (whose variant must match), checking its base checkpoint.

    Returns:
        The masker file's metadata.

    Raises:
        CheckpointError: not a masker file, variant mismatch, NaN/Inf weights.
    """
    tensors, meta = read_masker(path)
    apm, acpa = masker_variant(meta)
    if (apm, acpa) != (model.apm_variant, model.use_acpa):
        raise CheckpointError(
            f"{path} holds a masker for apm={apm or 'none'}, acpa={acpa} but the model is {model.variant}",
            api_hint=f"pass apm={apm!r}, acpa={acpa} or another masker file",
            cli_hint=f"pass --apm {apm or 'none'} {'--acpa' if acpa else '--no-acpa'} or another --masker file",
        )
    _check_masker_size(path, meta, model.image_size)
    required = [p for p, on in (("apm.", apm is not None), ("acpa.", acpa)) if on]
    merged = _merge_checked(model, tensors, required, str(path))
    base = meta.get("base_sha256")
    if weights is not None:
        have = weights.base_sha256
        if base and base != have:
            log.warning(
                "masker %s was fine-tuned on base weights %s but the model has %s; results may differ from the fine-tuned model",
                path, base[:16], have[:16],
            )
        weights.masker = str(path)
        weights.masker_sha256 = sha256_file(path)
        weights.masker_meta = meta
    model.load_state_dict(merged, strict=True)
    return meta


def load_learner(model: LFMHSNet, path: str | os.PathLike) -> str:
    """Load a learner file into `model`, checked first: the HSNet learner (`hpn_learner.*`, all of
    it) and optionally the backbone's last stage (`backbone.layer4.*`, all of it), nothing else.

    Read safely (`read_state_dict`: tensors only, never arbitrary pickled objects) and validated
    completely (every key of each part, nothing else, shapes, finiteness) before anything is copied.

    Returns:
        The file's sha256.

    Raises:
        CheckpointError: unreadable, not a learner file, or corrupt.
    """
    state = read_state_dict(path)
    parts = ["hpn_learner."] + (["backbone.layer4."] if any(k.startswith("backbone.layer4.") for k in state) else [])
    foreign = [k for k in state if not k.startswith(tuple(parts))]
    if foreign:
        raise CheckpointError(f"{path} is not a learner file: it has {len(foreign)} other keys ({_listing(foreign)})")
    model.load_state_dict(_merge_checked(model, state, parts, str(path)), strict=True)
    return sha256_file(path)


def _calibrate_batchnorm(backbone: torch.nn.Module, seed: int, images: int = 4, size: int = 128) -> None:
    """Give the untrained backbone realistic BatchNorm statistics from seeded noise images.

    Freshly initialised BN layers (mean 0, var 1) in eval mode let activations grow through the
    16 residual blocks; one pass in train mode over seeded inputs puts them on the scale of a
    trained network, so the untrained default exercises the numerics of a real one.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(images, 3, size, size, generator=gen)
    for m in backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: exact batch statistics after one pass
    backbone.train()
    with torch.no_grad():
        backbone(x)
    backbone.eval()
    for m in backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1


def build_model(
    apm: str | None = "m",
    acpa: bool = True,
    checkpoint: str | os.PathLike | None = None,
    masker: str | os.PathLike | None = None,
    *,
    image_size: int = 400,
    seed: int = DEFAULT_SEED,
    official_shift: bool = False,
    learner: str | os.PathLike | None = None,
    recipe: Mapping | None = None,
    announce: bool = True,
) -> tuple[LFMHSNet, WeightsInfo]:
    """Build an LFMHSNet in eval mode with its weights, and describe where they came from.

    With no `checkpoint`, backbone and learner get a deterministic seeded initialisation,
    labelled untrained. With a `learner` file (the synthetic-data default's, built by
    `lfm_deploy.pretrain.default_learner`), the seeded model gets that file's learner and is
    labelled the synthetic-data default (still `untrained`: not a real model); this builder never
    trains anything (the commands use `lfm_deploy.pretrain.build_default_model`). A `masker` file
    must match `apm`/`acpa` (a mismatch is an error, never silently adapted).

    Args:
        apm, acpa: the masker variant.
        checkpoint: an HSNet or ResNet-50 checkpoint (`load_checkpoint`).
        masker: a masker file from lfm-finetune.
        image_size: the square input size the model is built for.
        seed: seed of the default initialisation.
        official_shift: see `load_checkpoint`.
        learner: a learner-only file over the seeded default (not with `checkpoint`).
        recipe: how `learner` was trained, recorded in the `WeightsInfo`.
        announce: warn which built-in default is used (off for callers that build on it, like
            the synthetic default's own training).

    Raises:
        CheckpointError: see `load_checkpoint` and `load_masker`.

    Returns:
        (model, weights info).
    """
    if checkpoint is not None and learner is not None:
        raise CheckpointError("pass either a checkpoint or the synthetic default's learner file, not both")
    # Missing or misnamed files are reported before the network is built (seconds at 400 px).
    if learner is not None:
        _existing_file(learner, "learner file", "build the synthetic default again (lfm_deploy.pretrain)")
    if checkpoint is not None:
        _existing_file(checkpoint, "checkpoint", "pass the path of an existing file")
    if masker is not None:
        _existing_file(masker, "masker file", "pass the file written by lfm-finetune")
        _check_masker_size(masker, safetensors_metadata(Path(masker)) or {}, image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LFMHSNet(apm=apm, acpa=acpa, image_size=image_size)
        if checkpoint is None:
            _calibrate_batchnorm(model.backbone, seed)
    info = WeightsInfo(seed=seed)
    if checkpoint is not None:
        info = load_checkpoint(model, checkpoint, official_shift=official_shift)
    elif learner is not None:
        info = WeightsInfo(source=SYNTHETIC_SOURCE, seed=seed, learner=str(learner),
                           learner_sha256=load_learner(model, learner), recipe=dict(recipe) if recipe else None)
        if announce:
            log.warning("no checkpoint given: using the %s", SYNTHETIC_LABEL)
    elif announce:
        log.warning("no checkpoint given: using the %s", UNTRAINED_LABEL)
    if masker is not None:
        load_masker(model, masker, info)
    return model.eval(), info
