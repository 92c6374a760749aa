"""Runners: one Polygraphy `BaseRunner` interface for every backend (parity and benchmarks).

- `EagerRunner`: the eager PyTorch model (float32 or float64) behind the exported graphs'
  input/output contract (episode, encoder, head, or the layerwise debug graph);
- `OnnxrtRunner(OrtSession(path, providers))`: Polygraphy's onnxruntime runner, on a loader
  that controls threads and memory options and refuses silent CPU fallback;
- `SplitRunner`: the encoder -> head chain behind the episode contract, with the support set
  encoded once and reused while it does not change (per-query serving cost);
- TensorRT: Polygraphy's `TrtRunner(EngineFromPlan(path))` (`lfm_deploy.export.engine`).

Loaders are lazy callables (Polygraphy style): nothing heavy is created before `activate()`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from ..errors import BackendUnavailable, LFMError

log = logging.getLogger(__name__)

__all__ = [
    "CPU",
    "CUDA",
    "EagerRunner",
    "ModelFromManifest",
    "OrtSession",
    "SplitRunner",
    "cuda_ep_available",
    "manifest_of",
]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
GRAPHS = ("episode", "encoder", "head", "layerwise")


def manifest_of(artifacts: str | os.PathLike | Mapping) -> dict:
    """A manifest dict from an artifact directory (verified) or a manifest already read."""
    if isinstance(artifacts, Mapping):
        return dict(artifacts)
    from ..manifest import read_manifest

    return read_manifest(artifacts)


class ModelFromManifest:
    """Lazy loader: the eager model an artifact directory was exported from.

    Rebuilds it from the manifest's "weights" entry (checkpoint, masker, seed) and its
    variant and image size, so the eager reference is the same model as the graphs.

    Args:
        artifacts: artifact directory or manifest dict.
        dtype: "float32" or "float64".
        modify: optional callable applied to the built model (e.g. to inject a fault in a test).
    """

    def __init__(self, artifacts: str | os.PathLike | Mapping, dtype: str = "float32",
                 modify: Callable[[Any], None] | None = None):
        self.manifest = manifest_of(artifacts)
        self.dtype = dtype
        self.modify = modify

    def __call__(self):
        """Build the model.

        Returns:
            `LFMHSNet` in eval mode, in the requested dtype.

        Raises:
            CheckpointError: the checkpoint or masker named in the manifest is missing or differs.
        """
        import torch

        from ..models import build_model
        from ..models.checkpoints import DEFAULT_SEED

        m = self.manifest
        weights = m.get("weights", {})
        apm = m.get("apm", "m")
        model, _ = build_model(
            apm=None if apm in (None, "none") else apm, acpa=bool(m.get("acpa", True)),
            checkpoint=weights.get("checkpoint"), masker=weights.get("masker"),
            image_size=int(m["image_size"]),
            seed=DEFAULT_SEED if weights.get("seed") is None else int(weights["seed"]),
        )
        if self.modify is not None:
            self.modify(model)
        return model.to(torch.float64 if self.dtype == "float64" else torch.float32).eval()


class _EagerEpisode:
    """The eager model's own K-shot episode: `shot_logits` per shot, then HSNet's vote."""

    def __init__(self, model, shots: int):
        self.model = model
        self.shots = shots

    def __call__(self, query_img, support_imgs, support_masks):
        import torch

        from ..models.hsnet import vote_masks

        logits = self.model.shot_logits(query_img, support_imgs, support_masks)
        votes = torch.stack([x.argmax(dim=1) for x in logits]).sum(dim=0)
        mask = vote_masks(votes, self.shots).to(torch.uint8)
        return (logits[0], mask) if self.shots == 1 else (mask,)


class EagerRunner(BaseRunner):
    """The eager PyTorch model behind an exported graph's contract.

    Args:
        model: an `LFMHSNet` or a loader returning one (e.g. `ModelFromManifest`).
        graph: "episode" (the model's own `shot_logits` + vote), "encoder", "head" (the same
            wrappers the export traces, run eagerly) or "layerwise" (the debug graph of
            `lfm_deploy.parity.layerwise`).
        shots: K.
        dtype: "float32" or "float64" (inputs are given as float32 and cast).
        threads: `torch.set_num_threads` while active (restored afterwards).
        name: runner name.
    """

    def __init__(self, model, graph: str = "episode", *, shots: int = 1, dtype: str = "float32",
                 threads: int | None = None, name: str | None = None):
        super().__init__(name=name, prefix=f"eager-{dtype}")
        if graph not in GRAPHS:
            raise LFMError(f"unknown graph {graph!r}; choose one of {', '.join(GRAPHS)}")
        if dtype not in ("float32", "float64"):
            raise LFMError(f"dtype must be float32 or float64, got {dtype!r}")
        self._model = model
        self.graph = graph
        self.shots = int(shots)
        self.dtype = dtype
        self.threads = threads

    def activate_impl(self):
        import torch

        from ..export.graphs import EncoderGraph, EpisodeGraph, HeadGraph

        self._torch = torch
        self._saved_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(int(self.threads))
        if isinstance(self._model, torch.nn.Module):
            # Never change the caller's model: a float64 run works on a copy.
            model = copy.deepcopy(self._model) if self.dtype == "float64" else self._model
        else:
            model = self._model()
        self._tdtype = torch.float64 if self.dtype == "float64" else torch.float32
        model = model.to(self._tdtype).eval()
        size = model.image_size
        if self.graph == "episode":
            spec = EpisodeGraph(model, self.shots)
            self._fn = _EagerEpisode(model, self.shots)
        elif self.graph == "encoder":
            spec = self._fn = EncoderGraph(model).eval()
        elif self.graph == "head":
            spec = self._fn = HeadGraph(model, self.shots).eval()
        else:
            from .layerwise import LayerwiseEpisode

            spec = self._fn = LayerwiseEpisode(model, self.shots).eval()
        self._inputs = spec.inputs(size)
        self._outputs = [o.name for o in spec.outputs(size)]
        self.model = model

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for spec in self._inputs:
            meta.add(spec.name, dtype=np.dtype(spec.dtype), shape=tuple(spec.shape))
        return meta

    def infer_impl(self, feed_dict):
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(feed_dict[s.name])).to(self._tdtype) for s in self._inputs]
        start = time.perf_counter()
        with torch.inference_mode():
            outs = self._fn(*args)
        self.inference_time = time.perf_counter() - start
        return OrderedDict((name, t.numpy()) for name, t in zip(self._outputs, outs))

    def deactivate_impl(self):
        self._torch.set_num_threads(self._saved_threads)
        del self._fn, self.model


def cuda_ep_available() -> tuple[bool, str]:
    """Whether this onnxruntime build can load the CUDA execution provider, and why not."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA in available:
        return True, ""
    return False, (f"this onnxruntime build has no {CUDA} (available: {', '.join(available)}); "
                   "install onnxruntime-gpu on a machine with an NVIDIA GPU")


class OrtSession:
    """Lazy loader: an onnxruntime `InferenceSession` with checked providers.

    onnxruntime silently falls back to the CPU when a requested provider cannot be loaded
    (DEPLOY.md), so the session's providers are checked after creation.

    Args:
        path: the .onnx file.
        providers: execution providers, best first.
        threads: intra-op threads (None: onnxruntime's default).
        low_memory: disable the memory-pattern planner (as the runtime's default profile).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = (CPU,), threads: int | None = None,
                 low_memory: bool = False):
        self.path = Path(path)
        self.providers = list(providers)
        self.threads = threads
        self.low_memory = low_memory

    def __call__(self):
        """Create the session.

        Raises:
            BackendUnavailable: the file is missing or a requested provider is not active.
        """
        import onnxruntime as ort

        if not self.path.is_file():
            raise BackendUnavailable(f"{self.path} not found")
        if CUDA in self.providers:
            ok, why = cuda_ep_available()
            if not ok:
                raise BackendUnavailable(why)
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if self.low_memory:
            opts.enable_mem_pattern = False
        session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        missing = [p for p in self.providers if p != CPU and p not in session.get_providers()]
        if missing:
            raise BackendUnavailable(f"onnxruntime could not activate {', '.join(missing)} for {self.path.name} "
                                     f"(active: {', '.join(session.get_providers())})")
        return session


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


class SplitRunner(BaseRunner):
    """The encoder -> head chain behind the episode contract, support set encoded once.

    Takes the episode graph's inputs; every query of a batch must share one support set
    (the head's contract). The encoder runs only when the support set changes (a blake2b
    fingerprint of the support arrays, ~1 ms at 400x400), so repeated queries against a fixed
    support set cost one head run each: the serving path.

    Args:
        encoder, head: loaders (e.g. `OrtSession`) returning onnxruntime sessions.
        shots: K.
        name: runner name.
    """

    def __init__(self, encoder: Callable, head: Callable, *, shots: int = 1, name: str | None = None):
        super().__init__(name=name, prefix="split-runner")
        self._encoder_loader = encoder
        self._head_loader = head
        self.shots = int(shots)
        self.encoder_runs = 0

    def activate_impl(self):
        self._encoder = self._encoder_loader()
        self._head = self._head_loader()
        self._cache_key = None
        self._features = None
        query = next(i for i in self._head.get_inputs() if i.name == "query_img")
        self._size = query.shape[-1]

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        s, k = self._size, self.shots
        meta.add("query_img", dtype=np.float32, shape=("B", 3, s, s))
        meta.add("support_imgs", dtype=np.float32, shape=("B", k, 3, s, s))
        meta.add("support_masks", dtype=np.float32, shape=("B", k, s, s))
        return meta

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        imgs, masks = feed_dict["support_imgs"], feed_dict["support_masks"]
        for b in range(1, imgs.shape[0]):
            if not (np.array_equal(imgs[b], imgs[0]) and np.array_equal(masks[b], masks[0])):
                raise LFMError("the split encoder/head path needs one support set for the whole batch; "
                               "run queries with different support sets in separate batches")
        key = _fingerprint(imgs[0], masks[0])
        if key != self._cache_key:
            self._features = self._encoder.run(None, {"support_img": imgs[0], "support_mask": masks[0]})
            self._cache_key = key
            self.encoder_runs += 1
        l2, l3, l4 = self._features
        shot_logits, mask = self._head.run(None, {"query_img": feed_dict["query_img"], "support_l2": l2,
                                                  "support_l3": l3, "support_l4": l4})
        self.inference_time = time.perf_counter() - start
        if self.shots == 1:
            return OrderedDict([("logits", shot_logits[:, 0]), ("mask", mask)])
        return OrderedDict([("mask", mask)])

    def deactivate_impl(self):
        del self._encoder, self._head, self._features
