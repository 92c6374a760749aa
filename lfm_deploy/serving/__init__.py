"""Serving beyond one process: a Triton model repository (`triton`), batch segmentation on Ray
Data (`ray_batch`, `lfm predict --engine ray`) and an HTTP service on Ray Serve (`api`,
`ray_serve`, `lfm serve`).

Both Ray paths run the torch-free runtime's own `Segmenter` in every worker, so preprocessing,
sessions and masks are those of `lfm_deploy.runtime`. Ray is an optional extra (`pip install
"lfm-deploy[ray]"`) and is imported only by `ray_batch`, `ray_serve` and `cluster` (FastAPI,
in the same extra, only by `api`), never by this package's `__init__` or by `lfm_deploy.runtime`.
README.md, "Scale out with Ray", describes both paths.
"""
