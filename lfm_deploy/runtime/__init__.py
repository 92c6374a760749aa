"""Torch-free production runtime: onnxruntime + numpy + Pillow serving of lfm-export directories.

    from lfm_deploy.runtime import Segmenter

    seg = Segmenter.from_artifacts("artifacts/deepglobe", providers="cpu", threads=2)
    seg.set_support(["support.jpg"], ["support_mask.png"])   # K pairs, encoded once
    mask = seg.predict("query.jpg")                           # uint8 (H, W) in {0, 1}
    masks = seg.predict(["a.jpg", "b.jpg"])                   # batched, list of masks
    proba = seg.predict_proba("query.jpg")                    # float32 (H, W) in [0, 1]

Nothing in this package imports torch (checked by tests/runtime/test_torch_free.py).
"""

from ..errors import BackendUnavailable, InputError, ManifestError
from .inputs import Preprocessing
from .memory import limit_heap_retention, trim_heap
from .providers import PROVIDER_ALIASES, available_providers, resolve_providers
from .segmenter import DEFAULT_BATCH_SIZE, Segmenter, SupportSet
from .sessions import SessionConfig, SessionFromOnnx

__all__ = ["BackendUnavailable", "DEFAULT_BATCH_SIZE", "InputError", "ManifestError", "PROVIDER_ALIASES",
           "Preprocessing", "Segmenter", "SessionConfig", "SessionFromOnnx", "SupportSet", "available_providers",
           "limit_heap_retention", "resolve_providers", "trim_heap"]
