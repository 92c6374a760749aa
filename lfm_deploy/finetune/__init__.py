"""Per-domain fine-tuning of the masker and CD-FSS evaluation.

Only the torch-free metrics are imported here; the torch-based training code is imported from
its own modules so that `import lfm_deploy.finetune` stays light.
"""

from .metrics import SegmentationMeter, intersection_union

__all__ = ["SegmentationMeter", "intersection_union"]
