"""Cross-backend parity: Polygraphy-style runners, a comparison phase, and lfm-verify reports.

    from lfm_deploy.parity import verify_artifacts, write_report

    report = verify_artifacts("artifacts/deepglobe", episodes=3, layerwise=True)
    write_report(report, "artifacts/deepglobe/verify")   # verify.json / .md / .png
    assert report.passed, report.failures

Modules: `runners` (one `BaseRunner` interface for eager torch, onnxruntime, the split
encoder/head chain; TensorRT through Polygraphy's `TrtRunner`), `compare` (statistics and named
tolerances), `layerwise` (intermediate stages), `verify` (the run and comparison phases),
`report` (JSON/Markdown/PNG). torch is imported only when an eager model runs.
"""

from .compare import ErrorStats, MaskStats, Tolerance, Tolerances, error_stats, foreground_iou, mask_stats
from .report import markdown, plot_errors, write_report
from .verify import ALL_BACKENDS, REFERENCE, BackendResult, OutputComparison, VerifyReport, parity_episodes, verify_artifacts

__all__ = [
    "ALL_BACKENDS",
    "REFERENCE",
    "BackendResult",
    "ErrorStats",
    "MaskStats",
    "OutputComparison",
    "Tolerance",
    "Tolerances",
    "VerifyReport",
    "error_stats",
    "foreground_iou",
    "markdown",
    "mask_stats",
    "parity_episodes",
    "plot_errors",
    "verify_artifacts",
    "write_report",
]
