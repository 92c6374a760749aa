"""Serving beyond one process: a Triton model repository, batch segmentation on Ray Data and
an HTTP service on Ray Serve.

Both paths run the torch-free runtime's own `Segmenter` inside Ray actors (one per batch
worker, one per Serve replica), so preprocessing, sessions and masks are those of
`lfm_deploy.runtime`. Ray is an optional extra (`pip install "lfm-deploy[ray]"`) and is
imported only by `ray_batch`, `ray_serve` and `cluster` (FastAPI, in the same extra, only by
`api`), never by this package's `__init__` or by `lfm_deploy.runtime`.

Modules:
    triton: `write_triton_repository` / `validate_triton_repository` (configs as protobuf messages).
    collection: input expansion (folders, globs, list files, URIs) and reading, no Ray.
    batch: the predict path both engines of `lfm predict` share (output names, results table)
        and `segment_locally`, its engine in this process, no Ray.
    codec: mask PNG / overlay / run-length encodings shared by both paths, no Ray.
    job: driver-side checks of the artifacts and the support set, no Ray.
    cluster: start (private, loopback-only) or join a Ray cluster for the length of a job.
    resources: the measured memory of a worker, declared to Ray; a decoded-pixel budget.
    ray_batch: `segment_collection`, the Ray Data job behind `lfm predict --engine ray`.
    api: the service's HTTP layer (FastAPI: routes, body limits and deadline, token, JSON
        errors), independent of Ray.
    ray_serve: `Ingress`, `SegmentModel` and `build_app`, the Ray Serve application behind
        `lfm-serve`.
"""
