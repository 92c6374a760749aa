"""Runtime inputs: the manifest's preprocessing contract applied to user images and masks.

Everything goes through `lfm_deploy.preprocess`, the same functions the training and export
data readers use, so a served image is normalised exactly as during fine-tuning and export
validation (PIL bilinear resize, /255, mean/std; masks >= 128, torch-style nearest resize).
Bit depth, EXIF orientation and the warnings for masks that look wrong follow its rules
(README.md, "Production runtime").
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, ManifestError
from ..preprocess import (
    ImageLike,
    decode_mask,
    empty_mask_hint,
    mask_warnings,
    normalize_image,
    resize_mask_nearest,
    to_pil_rgb,
)

log = logging.getLogger(__name__)


def describe(item, index: int | None = None, role: str = "image") -> str:
    """A short name for an input in error messages: its path, or its role and index."""
    if isinstance(item, (str, os.PathLike)):
        return f"{role} {os.fspath(item)}"
    return f"{role} {index}" if index is not None else role


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing an export was validated with (`Manifest.preprocessing`).

    Attributes:
        size: square model input size S.
        color: "rgb" or "grayscale". Both feed the model three channels: grayscale inputs are
            replicated (PIL convert("RGB")), exactly as the training readers do.
        mean, std: per-channel normalisation after scaling pixels to [0, 1].
    """

    size: int
    color: str
    mean: tuple
    std: tuple

    @classmethod
    def from_manifest(cls, manifest) -> "Preprocessing":
        """The preprocessing of a `Manifest` (its fields are checked by `read_manifest`).

        Raises:
            ManifestError: a contract this runtime cannot reproduce (images below 32 px, a
                different pixel scale or mask threshold).
        """
        pre, size = manifest.preprocessing, manifest.image_size
        if size < 32:
            raise ManifestError(f"the manifest's image_size {size} is below 32; re-run lfm-export")
        if not math.isclose(pre.scale, 1.0 / 255.0, rel_tol=1e-6) or pre.mask_threshold != 128:
            raise ManifestError(
                f"the manifest asks for pixel scale {pre.scale} and mask threshold {pre.mask_threshold}; this runtime "
                "implements 1/255 and 128 (the CD-FSS contract); upgrade lfm-deploy"
            )
        return cls(size=size, color=pre.color, mean=tuple(map(float, pre.mean)), std=tuple(map(float, pre.std)))

    def image(self, image: ImageLike, what: str) -> tuple[np.ndarray, tuple[int, int]]:
        """Decode, check and normalise one image.

        Returns:
            (float32 (3, S, S) normalised image, (height, width) of the original).

        Raises:
            InputError: a missing or unreadable file, a directory, a wrong type/shape/dtype,
                float or 32-bit pixels, NaN/Inf, a zero or oversized image.
        """
        pil = to_pil_rgb(image, what)
        arr = normalize_image(pil, self.size, self.mean, self.std, what)
        return arr, (pil.height, pil.width)

    def support(self, image: ImageLike, mask: ImageLike, index: int, allow_empty: bool) -> tuple[np.ndarray, np.ndarray]:
        """One support pair at model size: (float32 (3,S,S) image, float32 (S,S) {0,1} mask).

        A mask that is accepted but looks wrong (see `preprocess.mask_warnings`) is logged as a
        warning.

        Raises:
            InputError: a bad image or mask, a mask whose size differs from its image, a
                non-binary float mask, or an empty mask (unless `allow_empty`).
        """
        img_what = describe(image, index, "support image")
        mask_what = describe(mask, index, "support mask")
        arr, (h, w) = self.image(image, img_what)
        decoded = decode_mask(mask, mask_what)
        binary = decoded.binary
        if binary.shape != (h, w):
            raise InputError(
                f"{mask_what} is {binary.shape[1]}x{binary.shape[0]} but its image is {w}x{h}; "
                "pass the mask drawn for that image, at the same size"
            )
        small = resize_mask_nearest(binary, self.size)
        if not small.any():
            # The common causes: labels or a 0/1 file read as 8-bit (>= 128), a tiny object.
            hint = (" (its foreground vanished when resized; the object is too small)" if binary.any()
                    else empty_mask_hint(decoded))
            message = (
                f"{mask_what} has no foreground pixels at the model's {self.size}x{self.size} resolution{hint}; "
                "HSNet would find nothing to match"
            )
            if not allow_empty:
                raise InputError(message, api_hint="pass a mask that marks the object, or allow_empty=True to accept it",
                                 cli_hint="pass a mask that marks the object, or --allow-empty-mask to accept it")
            log.warning("%s (accepted: allow_empty)", message)
        for note in mask_warnings(decoded, mask_what):
            log.warning("%s", note)
        return arr, small.astype(np.float32)
