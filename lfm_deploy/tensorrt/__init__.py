"""TensorRT: what can be known without it, and what needs it.

`lint` (TensorRT 10 readiness of an ONNX graph, from the onnx-tensorrt support table; no
TensorRT needed), `fp16` (fp16 graphs with fp32 islands after a range check on real
activations; no TensorRT needed), `engines` (engines built and loaded through Polygraphy's
loaders, with sidecars tying them to their TensorRT version and GPU). TensorRT itself is
imported lazily, only where an engine is built or run. See docs/tensorrt.md.
"""
