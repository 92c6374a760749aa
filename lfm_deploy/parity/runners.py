"""Runners: one Polygraphy `BaseRunner` interface for every backend (parity and benchmarks).

`EagerRunner` (the eager model behind a graph's contract, float32 or float64), Polygraphy's
`OnnxrtRunner` on the runtime's session loaders (`Backend.runner`), `SplitRunner` (encoder ->
head, the support set encoded once while it does not change) and, for TensorRT, Polygraphy's
`TrtRunner(EngineFromPlan(path))`. Loaders are lazy: nothing heavy exists before `activate()`.
`run_feeds` is the run phase for one runner (Polygraphy's `Comparator.run`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from ..errors import LFMError

log = logging.getLogger(__name__)

__all__ = [
    "CPU",
    "CUDA",
    "EagerRunner",
    "ModelFromManifest",
    "SplitRunner",
    "manifest_of",
    "plan_eager",
    "plan_split",
    "run_feeds",
]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
GRAPHS = ("episode", "encoder", "head")


def manifest_of(artifacts):
    """The `Manifest` of an artifact directory (read and verified), or the manifest given."""
    from ..manifest import read_manifest

    return read_manifest(artifacts) if isinstance(artifacts, (str, os.PathLike)) else artifacts


class ModelFromManifest:
    """Lazy loader: the eager model an artifact directory was exported from.

    Rebuilds it from the manifest's weights (checkpoint, masker, seed) and its variant and
    image size, so the eager reference is the same model as the graphs.

    Args:
        artifacts: artifact directory or `Manifest`.
        dtype: "float32" or "float64".
        modify: optional callable applied to the built model (e.g. to inject a fault in a test).
    """

    def __init__(self, artifacts, dtype: str = "float32",
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

        from ..manifest import sha256_file
        from ..models import build_model
        from ..models.checkpoints import DEFAULT_SEED, SYNTHETIC_SOURCE
        from ..pretrain import default_learner, recipe_of
        from ..utils.records import to_json

        m = self.manifest
        weights = m.weights
        seed = DEFAULT_SEED if weights.seed is None else weights.seed
        learner = None
        if weights.source == SYNTHETIC_SOURCE:
            # The synthetic-data default is rebuilt from its recorded recipe (the cache of this
            # machine, built if missing), and must be the very learner that was exported.
            learner = default_learner(recipe_of({"recipe": to_json(weights.recipe)}), seed)
            want, have = weights.learner_sha256, sha256_file(learner)
            if want and have != want:  # float64 recipes agree to ~1e-9 across CPUs, not always bit for bit
                log.warning("the synthetic-data default built here (%s, sha256 %s) is not byte-identical to the one "
                            "these artifacts were exported with (sha256 %s); small differences are expected on "
                            "another CPU, large ones mean another recipe: export again here", learner, have[:12],
                            want[:12])
        model, _ = build_model(
            apm=None if m.apm == "none" else m.apm, acpa=m.acpa, checkpoint=weights.checkpoint,
            masker=weights.masker, image_size=m.image_size, seed=seed, learner=learner,
            recipe=to_json(weights.recipe) if learner is not None else None,
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
            wrappers the export traces, run eagerly), or a callable (model, shots) -> module with
            `inputs(S)` / `outputs(S)` specs (e.g. the layer-wise debug graph of lfm-verify).
        shots: K.
        dtype: "float32" or "float64" (inputs are given as float32 and cast).
        threads: `torch.set_num_threads` while active (restored afterwards).
        name: runner name.
    """

    def __init__(self, model, graph: str = "episode", *, shots: int = 1, dtype: str = "float32",
                 threads: int | None = None, name: str | None = None):
        super().__init__(name=name, prefix=f"eager-{dtype}")
        if not callable(graph) and graph not in GRAPHS:
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

        from ..models.graphs import EncoderGraph, EpisodeGraph, HeadGraph

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
            spec = self._fn = self.graph(model, self.shots).eval()
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


def plan_eager(backend, ctx):
    """lfm-verify's plan for the eager model in float32 (`lfm_deploy.runtime.backends`, "eager-fp32")."""
    from ..runtime.backends import Planned

    shots = ctx.manifest.shots
    return Planned(backend.name, backend.precision, f"PyTorch float32, CPU, {ctx.thread_description}",
                   lambda: EagerRunner(ctx.model_loader("float32"), "episode", shots=shots, dtype="float32",
                                       threads=ctx.threads, name=backend.name))


def plan_split(backend, ctx):
    """lfm-verify's plan for the encoder -> head chain on onnxruntime CPU ("ort-cpu-split")."""
    from ..runtime.backends import Planned, get_backend

    if ctx.graphs.get("encoder") is None or ctx.graphs.get("head") is None:
        return Planned(backend.name, backend.precision, "", skip="the export has no encoder/head graphs (exported "
                       "without --split); re-export to check the cached-support path")
    cpu = get_backend("ort-cpu")
    enc, head = (cpu.loader(ctx.graphs[g], threads=ctx.threads) for g in ("encoder", "head"))
    return Planned(backend.name, backend.precision, f"{backend.description}, {ctx.thread_description}",
                   lambda: SplitRunner(enc, head, ctx.manifest.graphs, ctx.manifest.shots, name=backend.name))


def run_feeds(runner, feeds: Sequence[Mapping[str, np.ndarray]]) -> tuple[dict[str, list[np.ndarray]], float | None]:
    """The run phase for one runner (Polygraphy's `Comparator.run`): {output: [array per feed]}
    and the mean inference time in ms."""
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        results = Comparator.run([runner], data_loader=list(feeds))
    iterations = results[runner.name]
    outputs: dict[str, list] = {}
    for it in iterations:
        for k, v in it.items():
            outputs.setdefault(k, []).append(np.array(v))
    runtimes = [it.runtime for it in iterations if it.runtime is not None]
    return outputs, (1e3 * float(np.mean(runtimes)) if runtimes else None)


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
        encoder, head: loaders (e.g. `SessionFromOnnx`) returning onnxruntime sessions.
        graphs: the export's graph contract ({graph: `GraphIO`}, e.g. `Manifest.graphs`): it
            names the tensors.
        shots: K.
        name: runner name.
    """

    def __init__(self, encoder: Callable, head: Callable, graphs: Mapping, shots: int, *, name: str | None = None):
        from ..contract import graph_io

        super().__init__(name=name, prefix="split-runner")
        self._encoder_loader = encoder
        self._head_loader = head
        self.shots = int(shots)
        self._io = {g: graph_io(graphs, g) for g in ("episode", "encoder", "head")}
        self.encoder_runs = 0

    def activate_impl(self):
        self._encoder = self._encoder_loader()
        self._head = self._head_loader()
        self._cache_key = None
        self._features = None

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for spec in self._io["episode"].inputs:
            meta.add(spec.name, dtype=np.dtype(spec.dtype), shape=tuple(spec.shape))
        return meta

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        episode, encoder, head = self._io["episode"], self._io["encoder"], self._io["head"]
        imgs, masks = feed_dict[episode.input("supports")], feed_dict[episode.input("masks")]
        for b in range(1, imgs.shape[0]):
            if not (np.array_equal(imgs[b], imgs[0]) and np.array_equal(masks[b], masks[0])):
                raise LFMError("the split encoder/head path needs one support set for the whole batch; "
                               "run queries with different support sets in separate batches")
        key = _fingerprint(imgs[0], masks[0])
        if key != self._cache_key:
            roles = ("l2", "l3", "l4")
            feats = self._encoder.run([encoder.output(r) for r in roles], encoder.feed(image=imgs[0], mask=masks[0]))
            self._features = head.feed(**dict(zip(roles, feats)))
            self._cache_key = key
            self.encoder_runs += 1
        shot_logits, mask = self._head.run([head.output("per_shot"), head.output("mask")],
                                           {head.input("query"): feed_dict[episode.input("query")], **self._features})
        self.inference_time = time.perf_counter() - start
        if episode.has_output("logits"):
            return OrderedDict([(episode.output("logits"), shot_logits[:, 0]), (episode.output("mask"), mask)])
        return OrderedDict([(episode.output("mask"), mask)])

    def deactivate_impl(self):
        del self._encoder, self._head, self._features
