"""HSNet (ResNet-50) with the Lightweight Frequency Masker: the eager reference model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import FEATURE_LAYERS, ResNet50
from .learner import HPNLearner
from .masker import MaskModule, PhaseAttention

#: Channels of the layer4 features the masker acts on.
LAYER4_CHANNELS = 2048
#: Index of the first layer4 feature among the 13.
LAYER4_START = FEATURE_LAYERS.index(4)
APM_VARIANTS = ("m", "s", None)


def feature_sizes(image_size: int) -> tuple[int, int, int]:
    """Spatial size of the layer2, layer3, layer4 features for a square input: 400 -> (50, 25, 13)."""

    def down(n: int) -> int:  # a 3x3 / 7x7 conv or pool with stride 2 and "same" padding
        return (n - 1) // 2 + 1

    s = down(down(image_size))  # conv1, maxpool
    l2 = down(s)
    l3 = down(l2)
    l4 = down(l3)
    return l2, l3, l4


class BilinearMaskResize(nn.Module):
    """Support-mask resize of the eager model: bilinear, align_corners=True, as upstream.

    A module (not a bare call) so that export can swap in constant interpolation matrices that
    reproduce these exact weights (see `lfm_deploy.export.prepare`).
    """

    def forward(self, mask: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(mask, size, mode="bilinear", align_corners=True)


class LFMHSNet(nn.Module):
    """HSNet-ResNet50 with an optional Amplitude-Phase Masker and Channel Phase Attention.

    The order follows the official LFM code: backbone features of query and support (frozen,
    no grad); APM on the three layer4 features of support and query (one shared module);
    support features times the resized support mask; ACPA on the layer4 features of support
    and query; multilayer correlation; learner; bilinear upsampling to the image size.

    Args:
        apm: "m" (APM-M, mask (1,2048,13,13)), "s" (APM-S, (1,1,13,13)) or None (no APM).
        acpa: whether to apply ACPA.
        image_size: square input size the model is built for (400 in the CD-FSS protocol).

    State-dict keys: `backbone.*` (torchvision ResNet-50 incl. `fc`), `hpn_learner.*`,
    `apm.mask_amplitude`, `apm.mask_phase`, `acpa.phase_attn.{0,2}.weight` (upstream names).
    """

    def __init__(self, apm: str | None = "m", acpa: bool = True, image_size: int = 400):
        super().__init__()
        if apm not in APM_VARIANTS:
            raise ValueError(f"apm must be 'm', 's' or None, got {apm!r}")
        self.apm_variant = apm
        self.use_acpa = bool(acpa)
        self.image_size = int(image_size)
        l2, l3, l4 = feature_sizes(self.image_size)
        self.feature_hw = (l2, l3, l4)

        self.mask_resize = BilinearMaskResize()
        self.backbone = ResNet50()
        self.backbone.eval()
        self.backbone.requires_grad_(False)
        self.hpn_learner = HPNLearner(in_channels=(3, 6, 4), feature_sizes=(l4, l3, l2))
        if apm is not None:
            channels = LAYER4_CHANNELS if apm == "m" else 1
            self.apm = MaskModule((1, channels, l4, l4))
        if self.use_acpa:
            self.acpa = PhaseAttention(LAYER4_CHANNELS, reduction=8)

    # The backbone stays in eval mode (BN running statistics) whatever mode the model is in.
    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def variant(self) -> str:
        """Short variant name, e.g. 'apm-m+acpa', 'apm-s', 'hsnet'."""
        parts = []
        if self.apm_variant is not None:
            parts.append(f"apm-{self.apm_variant}")
        if self.use_acpa:
            parts.append("acpa")
        return "+".join(parts) or "hsnet"

    def extract_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """The frozen backbone's 13 pre-ReLU features (computed without grad)."""
        with torch.no_grad():
            return self.backbone.extract_features(img)

    def apply_to_layer4(self, module: nn.Module, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """`module` (APM or ACPA) applied to the layer4 features; the others pass through."""
        return feats[:LAYER4_START] + [module(f) for f in feats[LAYER4_START:]]

    def mask_support_features(self, feats: list[torch.Tensor], support_mask: torch.Tensor) -> list[torch.Tensor]:
        """Multiply each support feature by the support mask resized (bilinear, align_corners)."""
        mask = support_mask.unsqueeze(1).to(feats[0].dtype)
        resized = {}  # one resize per distinct feature size (3 for 13 features)
        out = []
        for f in feats:
            size = (int(f.shape[-2]), int(f.shape[-1]))  # static: the model is built for one size
            if size not in resized:
                resized[size] = self.mask_resize(mask, size)
            out.append(f * resized[size])
        return out

    def encode_support(self, support_feats: list[torch.Tensor], support_mask: torch.Tensor) -> list[torch.Tensor]:
        """Support features -> masked, frequency-filtered features ready for correlation."""
        if self.apm_variant is not None:
            support_feats = self.apply_to_layer4(self.apm, support_feats)
        support_feats = self.mask_support_features(support_feats, support_mask)
        if self.use_acpa:
            support_feats = self.apply_to_layer4(self.acpa, support_feats)
        return support_feats

    def encode_query(self, query_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Query features -> frequency-filtered features ready for correlation."""
        if self.apm_variant is not None:
            query_feats = self.apply_to_layer4(self.apm, query_feats)
        if self.use_acpa:
            query_feats = self.apply_to_layer4(self.acpa, query_feats)
        return query_feats

    def head(self, query_feats: list[torch.Tensor], support_feats: list[torch.Tensor], out_size) -> torch.Tensor:
        """Encoded query and support features -> logits (B, 2, *out_size)."""
        logits = self.hpn_learner.from_features(query_feats, support_feats)
        return F.interpolate(logits, out_size, mode="bilinear", align_corners=True)

    def forward(self, query_img: torch.Tensor, support_img: torch.Tensor, support_mask: torch.Tensor) -> torch.Tensor:
        """1-shot logits.

        Args:
            query_img: normalised query images (B, 3, H, W).
            support_img: normalised support images (B, 3, H, W).
            support_mask: support masks (B, H, W) in {0, 1}.

        Returns:
            logits (B, 2, H, W): background, foreground.
        """
        query = self.encode_query(self.extract_features(query_img))
        support = self.encode_support(self.extract_features(support_img), support_mask)
        return self.head(query, support, support_img.shape[-2:])

    def shot_logits(self, query_img: torch.Tensor, support_imgs: torch.Tensor, support_masks: torch.Tensor) -> list[torch.Tensor]:
        """1-shot logits of the query against each shot: K tensors (B, 2, H, W).

        Args:
            query_img: (B, 3, H, W).
            support_imgs: (B, K, 3, H, W).
            support_masks: (B, K, H, W).
        """
        if support_imgs.dim() != 5 or support_masks.dim() != 4:
            raise ValueError(
                f"support_imgs must be (B,K,3,H,W) and support_masks (B,K,H,W), got "
                f"{tuple(support_imgs.shape)} and {tuple(support_masks.shape)}"
            )
        # The query's features are the same for every shot: compute them once.
        query = self.encode_query(self.extract_features(query_img))
        out_size = support_imgs.shape[-2:]
        return [
            self.head(query, self.encode_support(self.extract_features(support_imgs[:, k]), support_masks[:, k]), out_size)
            for k in range(support_imgs.shape[1])
        ]

    def predict_mask_nshot(self, query_img: torch.Tensor, support_imgs: torch.Tensor, support_masks: torch.Tensor) -> torch.Tensor:
        """K-shot mask by HSNet's voting.

        Each shot runs the 1-shot model; the argmax maps are summed, divided by the largest vote
        in each image (at least 1) and thresholded at 0.5. 1-shot returns the argmax.

        Args:
            query_img: (B, 3, H, W).
            support_imgs: (B, K, 3, H, W).
            support_masks: (B, K, H, W).

        Returns:
            mask (B, H, W), int64 in {0, 1}.
        """
        with torch.no_grad():
            logits = self.shot_logits(query_img, support_imgs, support_masks)
        votes = torch.stack([x.argmax(dim=1) for x in logits]).sum(dim=0)
        return vote_masks(votes, len(logits))


def vote_masks(votes: torch.Tensor, shots: int) -> torch.Tensor:
    """HSNet's K-shot vote: (B, H, W) summed argmaxes -> {0, 1} masks."""
    if shots == 1:
        return votes
    b = votes.shape[0]
    # In float32 (exact for vote counts): TensorRT 10's Clip takes no INT64.
    votes = votes.float()
    max_vote = votes.reshape(b, -1).max(dim=1).values.clamp(min=1.0).reshape(b, 1, 1)
    return (votes / max_vote >= 0.5).long()
