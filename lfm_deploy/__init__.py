"""lfm-deploy: export, verify and serve HSNet + Lightweight Frequency Masker models.

The top-level package imports nothing heavy: `lfm_deploy.runtime` must work with numpy,
onnxruntime and Pillow alone, so torch is only imported by the stages that need it.
"""

__version__ = "0.1.0"
