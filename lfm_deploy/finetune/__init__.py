"""Per-domain fine-tuning of the masker and CD-FSS evaluation.

The metrics are torch-free and imported eagerly. The torch-based training and evaluation code
(`lfm_deploy.finetune.trainer`, `lfm_deploy.finetune.evaluate`) is not imported here, so that
`import lfm_deploy.finetune` stays light and works without torch; the trainer's main names are
available from the package on first use (`from lfm_deploy.finetune import finetune_domain`).
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
}
# `evaluate` is deliberately not re-exported: the name is also the submodule
# `lfm_deploy.finetune.evaluate`, and the two would shadow each other. Import it from there.

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
