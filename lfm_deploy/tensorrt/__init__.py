"""TensorRT: what can be known without it, and what needs it.

`lint` (TensorRT 10 readiness of an ONNX graph, from the onnx-tensorrt support table; no
TensorRT needed), `engines` (engines built and loaded through Polygraphy's loaders, with
sidecars tying them to their TensorRT version and GPU; an fp16 engine is built from the fp16
graph `lfm_deploy.precision.fp16` writes). TensorRT itself is
imported lazily, only where an engine is built or run. See docs/tensorrt.md.
"""
