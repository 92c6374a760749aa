"""Export: FFT lowering, ONNX graphs, validation, manifest, TensorRT lint, Triton repository.

Import the submodules directly (`lfm_deploy.export.pipeline.export_domain`, ...); this package
imports nothing at import time so that `lfm_deploy.export.trt_lint` works without torch.
"""
