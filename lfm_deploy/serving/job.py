"""Driver-side checks shared by the batch job and the service, run before any cluster starts.

A wrong artifact directory, a missing accelerator, the wrong number of support pairs or a bad
support mask is a user error: it is reported here, in the driver, as one `LFMError`, instead
of as a crashed actor deep inside a Ray job. The support files are read here too and shipped
to the workers as bytes, so they only need to exist on the machine that submits the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

from ..errors import BackendUnavailable, InputError, ManifestError
from ..manifest import Manifest, read_manifest
from ..runtime.memory import DEFAULT_BUDGET, model_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """A checked artifact directory and support set, ready to ship to Ray workers.

    Attributes:
        artifact_dir: absolute path of the export directory (every node reads it there).
        manifest: its verified `Manifest`.
        support_images, support_masks: the K support files' bytes.
        support_names: where they were read from (for logs and /metadata).
    """

    artifact_dir: str
    manifest: Manifest
    support_images: tuple
    support_masks: tuple
    support_names: tuple
    #: What runs (`lfm_deploy.runtime.precisions`): the resolved precision and the backend.
    precision: str = "fp32"
    backend: str = "onnxruntime"

    @cached_property
    def key(self) -> str:
        """What a run computes (artifact hashes, support files, precision, backend): `batch.resume`'s key."""
        digest = hashlib.sha256(json.dumps([sorted((n, e.sha256) for n, e in self.manifest.files.items()),
                                            self.precision, self.backend]).encode())
        for data in (*self.support_images, *self.support_masks):
            digest.update(hashlib.sha256(data).digest())
        return digest.hexdigest()[:16]

    @property
    def memory_model(self):
        """What a worker's Segmenter holds (`lfm_deploy.runtime.memory.model_for` this backend and export)."""
        return model_for(self.backend, self.manifest.correlation)

    def describe(self) -> str:
        """The export in a few words: "deepglobe, 1-shot, exported at int8"."""
        m = self.manifest
        return f"{m.domain}, {m.shots}-shot, exported at {m.served_precision.name}"

    def metadata(self) -> dict:
        """What the service's `GET /metadata` returns: the model and the artifacts' hashes."""
        m = self.manifest
        return {
            "domain": m.domain, "shots": m.shots, "variant": m.variant, "apm": m.apm, "acpa": m.acpa,
            "lowering": m.lowering,
            # The graphs the runtime serves: fp32, or an lfm-export --precision fp16 / int8 / bf16 export.
            "precision": m.served_precision.name,
            # What the workers run: the resolved --precision and the backend.
            "run": {"precision": self.precision, "backend": self.backend},
            "image_size": m.image_size, "untrained": m.untrained,
            # Which not-real weights ("" for a trained checkpoint): the untrained or the synthetic-data default.
            "weights_label": m.weights_label, "created_by": m.created_by,
            "artifacts": {name: entry.sha256 for name, entry in sorted(m.files.items())},
            "support": list(self.support_names)}


def prepare_job(artifact_dir: str | os.PathLike, support_images: Sequence[str | os.PathLike],
                support_masks: Sequence[str | os.PathLike], *, providers="cpu", allow_fallback: bool = False,
                allow_empty: bool = False, precision: str | None = None, support_required: bool = True) -> Job:
    """Verify the artifacts and the support set, and read the support files.

    Nothing heavy runs: the manifest's hashes are checked and the support pairs go through the
    runtime's own preprocessing checks (decoding, sizes, empty masks); no model is loaded.

    Args:
        artifact_dir: an lfm-export directory with the encoder/head pair.
        support_images, support_masks: K paths (or URIs) each, K = the export's shots.
        providers, allow_fallback: as `Segmenter.from_artifacts` (checked here against what this
            machine's onnxruntime offers, or OpenVINO for "openvino").
        allow_empty: accept support masks without foreground.
        precision: as `Segmenter.from_artifacts` ("auto" or None: what the export was made at;
            "fp32"; "fp16" / "int8" on such an export; "bf16" with providers "openvino").
        support_required: False: no pairs at all is accepted too (`lfm-serve` without --support).

    Returns:
        The `Job`.

    Raises:
        ManifestError: a missing, incomplete or modified artifact directory.
        BackendUnavailable: a requested execution provider is missing (and not `allow_fallback`).
        InputError: the wrong number of pairs, unreadable or invalid support files.
    """
    from ..runtime.inputs import Preprocessing
    from ..runtime.backends import select_backend
    from ..runtime.precisions import resolve_precision
    from ..runtime.providers import check_available, resolve_providers
    from .collection import read_bytes

    manifest = read_manifest(artifact_dir, verify_files=True)
    graphs = manifest.graphs
    if not {"encoder", "head"} <= set(graphs):
        raise ManifestError(f"{artifact_dir} has no encoder/head pair (graphs: {', '.join(graphs) or 'none'}); "
                            "re-run lfm-export with --split")
    backend = select_backend(providers)
    why = backend.unavailable() if backend is not None else None
    if why and not allow_fallback:  # missing: the install hint now, not in every worker
        raise BackendUnavailable(why, api_hint="or pass allow_fallback=True", cli_hint="or pass --allow-fallback")
    if why:  # the workers fall back to onnxruntime (Segmenter's rule)
        backend, providers, precision = None, "cpu", "fp32" if precision == "bf16" else precision
    if backend is None:
        check_available(resolve_providers(providers), allow_fallback)
    run = resolve_precision(manifest, precision, openvino=backend is not None and backend.runtime == "OpenVINO",
                            where=str(artifact_dir))
    images, masks = list(support_images), list(support_masks)
    shots = manifest.shots
    if len(images) != len(masks):
        raise InputError(f"got {len(images)} support images but {len(masks)} masks; pass one mask per image")
    if len(images) != shots and (images or support_required):
        raise InputError(f"got {len(images)} support pairs but the artifacts in {artifact_dir} were exported for "
                         f"{shots}-shot; pass exactly {shots} (or export with --shots {len(images)})")
    pre = Preprocessing.from_manifest(manifest)
    image_bytes, mask_bytes = [], []
    for i, (img, mask) in enumerate(zip(images, masks)):
        pair = []
        for location, role in ((img, "support image"), (mask, "support mask")):
            try:
                pair.append(read_bytes(os.fspath(location)))
            except OSError as exc:
                raise InputError(f"cannot read {role} {location}: {exc}; check the path") from None
        pre.support(pair[0], pair[1], i, allow_empty)  # the runtime's checks, names the pair
        image_bytes.append(pair[0])
        mask_bytes.append(pair[1])
    return Job(artifact_dir=str(Path(artifact_dir).resolve()), manifest=manifest,
               support_images=tuple(image_bytes), support_masks=tuple(mask_bytes),
               support_names=tuple(f"{os.fspath(i)}:{os.fspath(m)}" for i, m in zip(images, masks)),
               precision=run.name, backend=backend.runtime.lower() if backend is not None else "onnxruntime")


def segmenter_for(job: Job, *, providers="cpu", allow_fallback: bool = False, threads: int | None = None,
                  batch_size: int = 8, allow_empty: bool = False, precision: str | None = None,
                  spin_wait: bool = True, memory_budget: float | None = DEFAULT_BUDGET):
    """Inside a worker: load the artifacts and encode the job's support set (once).

    Returns:
        A ready `lfm_deploy.runtime.Segmenter`.
    """
    from ..runtime import Segmenter

    seg = Segmenter.from_artifacts(job.artifact_dir, providers=providers, allow_fallback=allow_fallback,
                                   threads=threads, batch_size=batch_size, precision=precision, spin_wait=spin_wait,
                                   memory_budget=memory_budget)
    seg.set_support(list(job.support_images), list(job.support_masks), allow_empty=allow_empty)
    return seg


def predict_isolated(seg, images: list, support=None, confidence: bool = False) -> list:
    """Masks for decoded images in one batched run; an image the runtime refuses fails alone.

    Args:
        seg: the `Segmenter`.
        images: decoded images.
        support: a `SupportSet` from `Segmenter.encode_support` (default: the Segmenter's own).
        confidence: return (mask, confidence) pairs (`Segmenter.predict_with_confidence`).

    Returns:
        One entry per image: the uint8 mask (or the pair), or the `InputError` that image raised.
    """
    if not images:
        return []
    run = seg.predict_with_confidence if confidence else seg.predict
    try:
        return run(list(images), support=support)
    except InputError:
        out = []
        for image in images:
            try:
                out.append(run([image], support=support)[0])
            except InputError as exc:
                out.append(exc)
        return out
