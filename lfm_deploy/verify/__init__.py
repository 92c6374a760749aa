"""`lfm-verify`: the same seeded episodes through every backend, judged by the parity stack.

    from lfm_deploy.verify import verify_artifacts, write_report

    report = verify_artifacts("artifacts/deepglobe", episodes=3, layerwise=True)
    write_report(report, "artifacts/deepglobe/verify")   # verify.json / .md / .png
    assert report.passed, report.failures

Modules: `job` (the run and comparison phases over the backends of
`lfm_deploy.runtime.backends`), `layerwise` (intermediate stages, first
mismatch), `report` (JSON/Markdown/PNG). The runners, comparison and episodes are
`lfm_deploy.parity`'s, the same ones export validation uses.
"""

from .job import REFERENCE, BackendResult, VerifyReport, verify_artifacts
from .report import REPORT_FILES, REPORT_KIND, markdown, plot_errors, write_report

__all__ = ["REFERENCE", "REPORT_FILES", "REPORT_KIND", "BackendResult", "VerifyReport", "markdown",
           "plot_errors", "verify_artifacts", "write_report"]
