"""Export: the eager model to ONNX. Prepare (FFT lowering, numerics twins, the learner's export
layout), export and simplify the graphs of the contract, validate them through
`lfm_deploy.parity`, write the manifest and report (`pipeline.export_domain`, the `lfm-export`
job).

Import the submodules directly (`lfm_deploy.export.pipeline.export_domain`, ...); this package
imports nothing at import time.
"""
