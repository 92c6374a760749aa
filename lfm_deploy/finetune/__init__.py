"""Per-domain fine-tuning of the masker and CD-FSS evaluation.

The metrics are torch-free and imported eagerly. The torch-based training and evaluation code
(`lfm_deploy.finetune.trainer`, `lfm_deploy.finetune.evaluate`) is imported on first use of one
of its names, so that `import lfm_deploy.finetune` stays light and works without torch.
"""

from __future__ import annotations

import importlib

from .metrics import SegmentationMeter, intersection_union

_LAZY = {
    "FinetuneError": "trainer",
    "FinetuneResult": "trainer",
    "SupportSet": "trainer",
    "finetune_domain": "trainer",
    "finetune_masker": "trainer",
    "init_masker": "trainer",
    "load_support_set": "trainer",
    "PROTOCOLS": "evaluate",
    "evaluate": "evaluate",
}

__all__ = ["SegmentationMeter", "intersection_union", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
