"""The eager PyTorch model: ResNet-50 backbone, HSNet head, frequency masker, checkpoints."""

from .backbone import ResNet50
from .checkpoints import (
    WeightsInfo,
    build_model,
    load_checkpoint,
    load_masker,
    read_masker,
    read_state_dict,
    save_masker,
    sha256_file,
)
from .hsnet import LFMHSNet, feature_sizes, vote_masks
from .masker import MaskModule, PhaseAttention, TorchFFT, official_to_spatial_shift

__all__ = [
    "LFMHSNet",
    "MaskModule",
    "PhaseAttention",
    "ResNet50",
    "TorchFFT",
    "WeightsInfo",
    "build_model",
    "feature_sizes",
    "load_checkpoint",
    "load_masker",
    "official_to_spatial_shift",
    "read_masker",
    "read_state_dict",
    "save_masker",
    "sha256_file",
    "vote_masks",
]
