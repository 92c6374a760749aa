"""`Segmenter`: serve an lfm-export directory with onnxruntime (or OpenVINO) and a cached support set.

Lifecycle: `from_artifacts` verifies the manifest and loads the encoder graph; `set_support`
encodes the domain's K support pairs once, freezes the features and (by default) frees the
encoder; `predict` / `predict_proba` run only the head graph (query backbone + correlation +
learner) against the cached features. The episode graph is never loaded.

Output size: the model predicts at S x S (the manifest's image size, 400 in the benchmark);
results are resized back to each image's original size with nearest-neighbour sampling
(torch `interpolate(mode="nearest")` indices, the rule the data readers use for masks). Nearest
keeps masks binary and makes `predict_proba(x) > 0.5` agree with `predict(x)` for K = 1 at any
size; it reproduces the model-resolution result exactly on every pixel that maps to it. (The
upstream evaluation instead upsamples logits bilinearly before the argmax, which smooths mask
edges at large sizes; pass `original_size=False` to get the S x S result and resize it yourself.)

Backends: onnxruntime execution providers (CPU, CUDA, TensorRT), or a backend of the registry
(`lfm_deploy.runtime.backends`, docs/backends.md) picked by `backend=` or by a runtime's name
in `providers=` with `precision=` (`providers="openvino"`, `precision="bf16"`: docs/openvino.md).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError, ManifestError
from ..manifest import Manifest, read_manifest, verify_file
from ..preprocess import ImageLike, resize_mask_nearest
from ..utils.limits import cap_threads
from .inputs import Preprocessing, describe
from .memory import DEFAULT_BUDGET, GB, model_for, trim_heap
from .backends import select_backend
from .precisions import resolve_precision
from .providers import ProviderSpec, check_available, resolve_providers
from .sessions import SessionConfig, SessionFromOnnx

log = logging.getLogger(__name__)

#: The support features by role (`lfm_deploy.contract`): encoder outputs, head inputs.
FEATURE_ROLES = ("l2", "l3", "l4")

DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class SupportSet:
    """The encoded support set: read-only features, swapped in as a whole (thread safety).

    Attributes:
        features: the head's support inputs by tensor name: (K,4,512,S/8,S/8), (K,6,1024,...),
            (K,3,2048,...) for the roles l2, l3, l4.
        foreground: foreground share of each support mask at model resolution.
    """

    features: dict
    foreground: tuple


class Segmenter:
    """Few-shot segmentation of query images against a fixed, cached support set.

    Build it with `Segmenter.from_artifacts(directory)`, then call `set_support(images, masks)`
    once and `predict(image)` as often as needed, from any number of threads.

    Memory: the encoder is freed once the support set is encoded and the head is created only
    then, so the two are never resident together; sessions run without onnxruntime's
    memory-pattern planner (`low_memory=True`), which would reserve one block for all of a run's
    intermediates, and the heap freed while building each one goes back to the OS (`trim_heap`).
    `memory_budget` caps the queries per head run. Figures: docs/performance.md, "Memory".

    Thread safety: `predict`/`predict_proba` may run concurrently (onnxruntime's `run` is
    thread-safe; an OpenVINO session gives each concurrent call its own infer request); each
    call takes one immutable snapshot of the support features, so a concurrent `set_support`
    never mixes two support sets within a call. `set_support` calls are serialised by a lock.

    Args (of the constructor; prefer `from_artifacts`):
        directory: the export directory.
        manifest: its parsed, verified `Manifest`.
        providers, allow_fallback, threads, graph_optimization, low_memory, release_encoder,
        batch_size, verify, precision, backend: see `from_artifacts`.
    """

    #: Set by `close`; from then on every method that does work refuses.
    _closed = False

    def __init__(self, directory: str | os.PathLike, manifest: Manifest, *, providers=None, allow_fallback: bool = False,
                 threads: int | None = None, graph_optimization: str = "all", low_memory: bool = True,
                 release_encoder: bool = True, batch_size: int = DEFAULT_BATCH_SIZE, verify: bool = True,
                 precision: str | None = None, spin_wait: bool = True, openvino_cache: str | os.PathLike | None = None,
                 memory_budget: int | float | None = DEFAULT_BUDGET, backend: str | None = None,
                 openvino_static_shapes: bool = False):
        self.directory = Path(directory)
        self._manifest = manifest
        self._verify = bool(verify)
        self.preprocessing = Preprocessing.from_manifest(manifest)
        self.shots = manifest.shots
        self.batch_size = _check_batch_size(batch_size)
        self.release_encoder = bool(release_encoder)
        if isinstance(threads, (int, np.integer)) and not isinstance(threads, bool) and threads > 0:
            threads = cap_threads(int(threads))  # more threads than cores: minutes instead of seconds
        self.config = SessionConfig(threads=threads, graph_optimization=graph_optimization, low_memory=low_memory,
                                    spin_wait=spin_wait)
        chosen = select_backend(providers, backend=backend)  # None: onnxruntime with these providers
        if backend is not None:  # a backend by name runs in its own precision
            if precision in (None, "auto"):
                precision = chosen.precision
            elif precision != chosen.precision:
                raise InputError(f"backend {backend!r} runs {chosen.precision}, not {precision}",
                                 api_hint=f"leave precision= out, or pick a backend that runs {precision} "
                                          "(docs/backends.md)")
        why = chosen.unavailable() if chosen is not None else None
        if why and allow_fallback:
            log.warning("%s; falling back to onnxruntime's CPU provider%s", why, " in fp32" if precision == "bf16" else "")
            chosen, providers, precision = None, "cpu", "fp32" if precision == "bf16" else precision
        run = resolve_precision(manifest, precision, openvino=chosen is not None and chosen.runtime == "OpenVINO",
                                where=str(self.directory))
        if chosen is not None and backend is None:  # picked by providers=: the runtime's row for that precision
            chosen = select_backend(providers, run.backend_precision)
        #: The registry backend the graphs run on (`lfm_deploy.runtime.backends`; None: onnxruntime
        #: with the given providers).
        self.runs_on = chosen
        #: The memory model of this runtime and export (`lfm_deploy.runtime.memory`), and the most
        #: queries per head run that the memory budget allows (None: no budget).
        self.memory_model = model_for(self.backend, manifest.correlation)
        self.max_head_batch = None
        if memory_budget is not None:
            size, model = self.preprocessing.size, self.memory_model
            self.max_head_batch = model.head_batch(size, memory_budget)
            if model.peak(size, self.max_head_batch) > memory_budget:
                log.warning("memory_budget %.2f GB is below what one query needs at %d px (~%.2f GB modelled, "
                            "lfm_deploy.runtime.memory); running one query per head run", memory_budget / GB, size,
                            model.peak(size, 1) / GB)
            else:
                log.info("memory_budget %.2f GB: at most %d queries per head run at %d px", memory_budget / GB,
                         self.max_head_batch, size)
        #: The precision the graphs run in: "fp32", "fp16", "int8" (graphs of such an export) or
        #: "bf16" (OpenVINO only); `precision="auto"` (None) resolves to the export's own
        #: (`lfm_deploy.runtime.precisions`).
        self.precision = run.name
        #: What the artifact was exported at.
        self.exported_precision = run.exported
        self._files = run.files
        if chosen is None:
            requested = resolve_providers(providers)
            check_available(requested, allow_fallback)  # fail (or warn) before any session exists
        files = {}
        for name in ("encoder", "head"):
            files[name] = self._graph_file(name)
        #: The graphs' tensors, read from the manifest and addressed by role (the graph contract).
        self._io = {name: manifest.io(name) for name in files}
        if openvino_cache is not None and Path(openvino_cache).resolve().is_relative_to(self.directory.resolve()):
            raise InputError(f"openvino_cache {openvino_cache} is inside the artifact directory {self.directory}, which "
                             "holds only what lfm-export wrote", api_hint="pass a folder outside it, e.g. ~/.cache/lfm-openvino")
        if chosen is not None:
            # A bf16 export names the f32 islands its gate was measured with; others get the default.
            islands = manifest.served_precision.runtime.f32_islands
            self._loaders = {name: chosen.loader(files[name], threads=threads, config=self.config,
                                                 allow_fallback=allow_fallback, f32_islands=islands,
                                                 cache_dir=openvino_cache, static_shapes=openvino_static_shapes,
                                                 what=f"{name} graph")
                             for name in files}
        else:
            if openvino_static_shapes:
                log.warning("openvino_static_shapes applies to OpenVINO only; onnxruntime runs with its own shapes")
            self._loaders = {
                name: SessionFromOnnx(files[name], requested, config=self.config, allow_fallback=allow_fallback,
                                      what=f"{name} graph")
                for name in files
            }
        self._lock = threading.Lock()
        #: Largest batch the head graph runs (1 for graphs found to have a static batch).
        self._batch_limit = 1 << 30
        self._support: SupportSet | None = None
        self._encoder = None
        self._head = None
        self._check_gate(manifest)
        if manifest.untrained:
            log.warning("%s holds the %s weights: masks say nothing about real images; export with --checkpoint "
                        "for a real model", self.directory, manifest.weights_label)
        if manifest.engines:
            log.info("%s lists TensorRT engines; this runtime uses the ONNX graphs (providers='tensorrt' builds "
                     "engines through onnxruntime's TensorRT EP)", self.directory)
        # Load the encoder now: provider problems and contract mismatches surface at load time,
        # and the head is created only after the encoder is freed (lower peak memory).
        self._encoder = self._load("encoder", recheck=False)  # read_manifest has just hashed it

    # ------------------------------------------------------------------ construction
    def _check_gate(self, manifest: Manifest) -> None:
        """bf16 is a contract too: refused where this export's bf16 gate failed, flagged where it never ran.

        `lfm-export --precision bf16` measures OpenVINO bf16 against the eager model's masks
        and records the verdict (docs/precision.md); int8 and fp16 exports are gated when made.
        """
        if self.precision != "bf16":
            return
        record = manifest.served_precision
        if record.name != "bf16":
            log.warning("%s was not gated for bf16: its masks under bf16 were never compared with the eager model's; "
                        "check them with lfm-verify --backend ov-bf16, or export with --precision bf16", self.directory)
        elif record.gate is None or not record.gate.passed:
            raise ManifestError(f"{self.directory}: OpenVINO bf16 failed this export's accuracy gate",
                                api_hint="use precision='fp32'", cli_hint="use --precision fp32")

    @property
    def backend(self) -> str:
        """The runtime that runs the graphs: "onnxruntime" or "openvino" (the registry's row: `runs_on`)."""
        return self.runs_on.runtime.lower() if self.runs_on is not None else "onnxruntime"

    @classmethod
    def from_artifacts(cls, path: str | os.PathLike, providers: str | Sequence[ProviderSpec] | None = None,
                       allow_fallback: bool = False, threads: int | None = None, graph_optimization: str = "all",
                       verify: bool = True, *, low_memory: bool = True, release_encoder: bool = True,
                       batch_size: int = DEFAULT_BATCH_SIZE, precision: str | None = None,
                       spin_wait: bool = True, openvino_cache: str | os.PathLike | None = None,
                       memory_budget: int | float | None = DEFAULT_BUDGET, backend: str | None = None,
                       openvino_static_shapes: bool = False) -> "Segmenter":
        """Load an lfm-export directory.

        Args:
            path: the export directory (holds manifest.json, encoder.onnx, head.onnx).
            providers: onnxruntime execution providers, best first (`resolve_providers`: None is
                the CPU, which is always appended last), or a runtime's name alone
                (`lfm_deploy.runtime.backends.selectors()`: "openvino").
            allow_fallback: when a requested accelerator (or OpenVINO) is missing, log a warning
                and run on what onnxruntime activated (its CPU provider, in fp32) instead of raising.
            threads: intra-op threads per session (None: the runtime's default), capped at the
                CPU cores this process may use, with a warning.
            graph_optimization: "all", "extended", "basic" or "disable" (onnxruntime only).
            verify: check every file's size and sha256 against the manifest, now and before each
                later session creation. Turn off only for trusted, already verified copies.
            low_memory: disable onnxruntime's memory-pattern planner (smaller resident set;
                onnxruntime only).
            release_encoder: free the encoder session after `set_support` (re-created on the
                next `set_support`); a server with a fixed support set never needs it again.
            batch_size: default number of queries per head run in `predict([...])`.
            memory_budget: bytes this Segmenter's process may hold at its peak (default 1.5 GB,
                `lfm_deploy.runtime.memory.DEFAULT_BUDGET`; None: no limit): caps the queries per
                head run by the runtime's measured `memory_model` (docs/performance.md). Results
                are the same.
            precision: which graphs run (`lfm_deploy.runtime.precisions`): "auto" (None, what the
                export was made at), "fp32" (the float32 graphs of any export), "fp16" / "int8"
                (only an export made at that precision) or "bf16" (providers="openvino" only;
                docs/openvino.md).
            spin_wait: onnxruntime's idle threads spin (its default); False when the process
                shares its cores with busy neighbours (`SessionConfig.spin_wait`).
            openvino_cache: OpenVINO only: a folder for compiled models (`CACHE_DIR`), never
                inside the artifact directory (docs/openvino.md).
            backend: a backend of the registry by name (`lfm_deploy.runtime.backends`,
                docs/backends.md, e.g. "ov-bf16"), instead of `providers` and `precision`.
            openvino_static_shapes: OpenVINO only: compile each graph for the shapes of its
                calls, again when they change (`SessionFromOpenVINO`): less memory and faster
                when every call has the same number of queries (batch 1, 400 px, int8 export on
                a 2-core Intel Xeon: 0.53 instead of 0.71 GB, 0.84x-0.90x the warm time;
                docs/performance.md), about 1 to 2 s more at each change of batch size.

        Returns:
            A `Segmenter` without a support set (call `set_support`).

        Raises:
            ManifestError: missing/invalid manifest, incompatible schema version, modified or
                truncated files, an export without the encoder/head pair, or graphs that do not
                follow the contract.
            BackendUnavailable: a requested execution provider is not active, or OpenVINO is
                not installed (and not `allow_fallback`).
            InputError: an unknown provider or backend name, "openvino" mixed with other
                providers, bf16 without OpenVINO, a precision the export does not hold, or an
                invalid option.
        """
        manifest = read_manifest(path, verify_files=verify)
        if not verify:
            log.info("%s: file hashes not verified (verify=False)", path)
        return cls(path, manifest, providers=providers, allow_fallback=allow_fallback, threads=threads,
                   graph_optimization=graph_optimization, low_memory=low_memory, release_encoder=release_encoder,
                   batch_size=batch_size, verify=verify, precision=precision, spin_wait=spin_wait,
                   openvino_cache=openvino_cache, memory_budget=memory_budget, backend=backend,
                   openvino_static_shapes=openvino_static_shapes)

    def _graph_file(self, name: str) -> Path:
        graphs = self._manifest.graphs
        if name not in graphs:
            raise ManifestError(
                f"{self.directory} has no {name} graph (graphs: {', '.join(graphs) or 'none'}); the runtime needs the "
                "encoder/head pair", api_hint="re-export with lfm_deploy.export.pipeline.export_domain(..., split=True)",
                cli_hint="re-run lfm-export with --split",
            )
        rel = (self._files or {}).get(name) or graphs[name].file
        path = self.directory / rel  # listed with a hash: checked by read_manifest
        if not path.is_file():
            raise ManifestError(f"{path} is listed in the manifest but missing; re-run lfm-export")
        return path

    def _recheck(self, name: str) -> None:
        """Re-hash a graph (and its external data) right before a later session creation.

        Sessions are created after `from_artifacts` (the head once the encoder is freed, the
        encoder again on a new `set_support`); an lfm-export into the same directory meanwhile
        would pair features of one export with the head of another, silently.
        """
        rel = (self._files or {}).get(name) or self._manifest.graphs[name].file
        for entry in self._manifest.files.values():
            if entry.path in (rel, rel + ".data"):
                try:
                    verify_file(self.directory, entry)
                except ManifestError as exc:
                    raise ManifestError(
                        f"the artifacts changed while in use: {exc} (create a new Segmenter for the new export)"
                    ) from None

    def _load(self, name: str, recheck: bool = True):
        if recheck and self._verify:
            self._recheck(name)
        session = self._loaders[name]()
        if self.config.low_memory:
            # Building a session frees as much as it keeps (onnxruntime's layout rewrite copies
            # the convolution weights; the parsed graph goes): glibc keeps those pages, and the
            # first runs' large blocks are mmapped on top of them. Handing them back lowered the
            # 400 px serving peak by ~0.1 GB at no cost per query (benchmarks/bench_memory.py).
            trim_heap()
        io = self._io[name]
        expected_in, expected_out = tuple(io.input_names), tuple(io.output_names)
        got_in = tuple(i.name for i in session.get_inputs())
        got_out = tuple(o.name for o in session.get_outputs())
        if set(got_in) != set(expected_in) or not set(expected_out) <= set(got_out):
            raise ManifestError(
                f"{self._loaders[name].path} has inputs {got_in} and outputs {got_out}, expected {expected_in} -> "
                f"{expected_out}; it is not an lfm-export {name} graph"
            )
        size = self.preprocessing.size
        img = session.get_inputs()[got_in.index(io.input("image" if name == "encoder" else "query"))]
        if list(img.shape[-2:]) != [size, size]:
            raise ManifestError(
                f"{self._loaders[name].path} takes {img.shape[-2:]} images but the manifest says {size}x{size}; "
                "re-run lfm-export"
            )
        if name == "head":
            k = session.get_inputs()[got_in.index(io.input("l2"))].shape[0]
            if isinstance(k, int) and k != self.shots:
                raise ManifestError(f"the head graph takes {k} shots but the manifest says {self.shots}; re-run lfm-export")
        return session

    # ------------------------------------------------------------------ properties
    @property
    def manifest(self) -> Manifest:
        """The artifact manifest (immutable)."""
        return self._manifest

    @property
    def domain(self) -> str:
        """The domain the artifacts were exported for."""
        return self._manifest.domain

    @property
    def image_size(self) -> int:
        """The square model resolution S."""
        return self.preprocessing.size

    @property
    def untrained(self) -> bool:
        """Whether the artifacts hold weights that are not a real model (the seeded untrained
        default or the synthetic-data default; `weights_label` says which)."""
        return self._manifest.untrained

    @property
    def weights_label(self) -> str:
        """How the artifacts' weights are flagged when they are not a real model, else ""."""
        return self._manifest.weights_label

    @property
    def has_support(self) -> bool:
        """Whether `set_support` has been called."""
        return self._support is not None

    @property
    def providers(self) -> list[str]:
        """The execution providers active in the loaded session(s) (OpenVINO: e.g. "OpenVINO CPU (bf16)")."""
        session = self._head or self._encoder
        return list(session.get_providers()) if session is not None else []

    @property
    def closed(self) -> bool:
        """Whether `close` has been called (then `set_support` and `predict` refuse to run)."""
        return self._closed

    def close(self) -> None:
        """Free the sessions and the support set. The Segmenter cannot be used afterwards:
        `set_support`, `predict` and `predict_proba` raise an `InputError` saying it is closed.
        Closing twice is harmless."""
        with self._lock:
            self._closed = True
            self._encoder = None
            self._head = None
            self._support = None

    def _check_open(self) -> None:
        if self._closed:
            raise InputError(f"this Segmenter ({self.directory}) is closed: close() (or the end of its with block) "
                             "freed its sessions and support set",
                             api_hint="create a new one with Segmenter.from_artifacts(...)")

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Segmenter(domain={self.domain!r}, shots={self.shots}, size={self.image_size}, "
                f"support={'set' if self.has_support else 'not set'})")

    # ------------------------------------------------------------------ support set
    def set_support(self, images: ImageLike | Sequence[ImageLike], masks: ImageLike | Sequence[ImageLike], *,
                    allow_empty: bool = False) -> None:
        """Encode the support set once; later predictions reuse the features.

        Args:
            images: exactly K = manifest.shots support images (paths, PIL images or uint8 /
                uint16 arrays; bit depths as `lfm_deploy.preprocess` reads them); a single image
                is accepted when K = 1.
            masks: one mask per image, at the image's size: 8-bit masks (files, PIL images,
                uint8 arrays with values above 1) are foreground where >= 128, 16-bit ones where
                >= 32768; {0, 1} or bool arrays are used as they are. An accepted mask that
                looks wrong (grey levels, colour, a photograph) is logged as a warning.
            allow_empty: accept a mask without foreground (at model resolution), with a warning.
                HSNet then correlates against all-zero features and predicts noise, so by default
                such a mask is refused as the mistake it almost always is.

        Raises:
            InputError: the Segmenter is closed, the wrong number of pairs, unreadable or invalid images/masks, a mask
                whose size differs from its image, a non-binary float mask or an empty mask.
        """
        support = self.encode_support(images, masks, allow_empty=allow_empty, release_encoder=self.release_encoder)
        with self._lock:
            self._check_open()
            self._support = support

    def encode_support(self, images: ImageLike | Sequence[ImageLike], masks: ImageLike | Sequence[ImageLike], *,
                       allow_empty: bool = False, release_encoder: bool = False) -> SupportSet:
        """Encode a support set without making it this Segmenter's own: pass the result to
        `predict(..., support=...)` (a service holding several sets encodes each once).

        Same arguments, checks and errors as `set_support`; the encoder stays loaded unless
        `release_encoder`.

        Returns:
            The immutable `SupportSet` (features and each mask's foreground share).
        """
        self._check_open()
        images = _as_list(images)
        masks = _as_list(masks)
        if len(images) != len(masks):
            raise InputError(f"got {len(images)} support images but {len(masks)} masks",
                             api_hint="pass one mask per image", cli_hint="pass one --support IMAGE:MASK per pair")
        if len(images) != self.shots:
            # Re-exporting for the given count is an alternative only for a positive count.
            if images:
                api_hint = f"pass exactly {self.shots} (or re-export with export_domain(..., shots={len(images)}))"
                cli_hint = f"pass exactly {self.shots} --support pairs (or re-run lfm-export with --shots {len(images)})"
            else:
                api_hint = f"pass exactly {self.shots}"
                cli_hint = f"pass exactly {self.shots} --support pairs"
            raise InputError(
                f"got {len(images)} support pairs but the artifacts in {self.directory} were exported for "
                f"{self.shots}-shot", api_hint=api_hint, cli_hint=cli_hint,
            )
        pairs = [self.preprocessing.support(img, mask, i, allow_empty) for i, (img, mask) in enumerate(zip(images, masks))]
        with self._lock:
            self._check_open()  # closed while the pairs were read
            encoder = self._encoder if self._encoder is not None else self._load("encoder")
            self._encoder = encoder
            # One shot per run: the rows are independent and this keeps the peak at one image.
            enc, head = self._io["encoder"], self._io["head"]
            per_shot = [encoder.run([enc.output(r) for r in FEATURE_ROLES], enc.feed(image=img[None], mask=mask[None]))
                        for img, mask in pairs]
            features = {}
            for i, role in enumerate(FEATURE_ROLES):
                arr = np.ascontiguousarray(np.concatenate([out[i] for out in per_shot]))
                arr.setflags(write=False)
                features[head.input(role)] = arr
            del per_shot
            foreground = tuple(float(mask.mean()) for _, mask in pairs)
            support = SupportSet(features=features, foreground=foreground)
            if release_encoder:
                self._encoder = None
                del encoder
            log.info("support set encoded: %d shot(s), foreground %s", self.shots,
                     ", ".join(f"{f:.1%}" for f in foreground))
        self._ensure_head()
        return support

    def clear_support(self) -> None:
        """Forget the support set (predictions need a new `set_support`)."""
        with self._lock:
            self._support = None

    def _ensure_head(self):
        head = self._head
        if head is None:
            with self._lock:
                self._check_open()
                if self._head is None:
                    self._head = self._load("head")
                head = self._head
        return head

    # ------------------------------------------------------------------ prediction
    def predict(self, images: ImageLike | Sequence[ImageLike], *, batch_size: int | None = None,
                original_size: bool = True, support: SupportSet | None = None) -> np.ndarray | list[np.ndarray]:
        """Segment query images against the cached support set.

        Args:
            images: one image (path, PIL image, uint8 or uint16 array) or a list/tuple of them.
            batch_size: queries per head run (default: the Segmenter's, 8).
            original_size: resize each mask back to its image's size (nearest); False returns
                the S x S model-resolution mask.
            support: a set from `encode_support` to use instead of the one `set_support` made.

        Returns:
            uint8 (H, W) mask in {0, 1} (K > 1: HSNet's vote over the shots), or a list of them
            for a list input.

        Raises:
            InputError: the Segmenter is closed, no support set yet, or an invalid image (the
                message names which).
        """
        return self._run(images, batch_size, original_size, proba=False, support=support)

    def predict_proba(self, images: ImageLike | Sequence[ImageLike], *, batch_size: int | None = None,
                      original_size: bool = True, support: SupportSet | None = None) -> np.ndarray | list[np.ndarray]:
        """Foreground probability of each pixel.

        The softmax of the two logits; for K > 1 the mean of the K per-shot probabilities
        (a soft version of the vote: `predict` keeps HSNet's vote, so for K > 1 the two can
        disagree where the shots do). For K = 1, `predict_proba(x) > 0.5` equals `predict(x)` except
        where the two logits are equal to float rounding.

        Args:
            images, batch_size, original_size, support: as `predict`.

        Returns:
            float32 (H, W) in [0, 1], or a list of them for a list input.

        Raises:
            InputError: the Segmenter is closed, no support set yet, or an invalid image.
        """
        return self._run(images, batch_size, original_size, proba=True, support=support)

    def predict_with_confidence(self, images: ImageLike | Sequence[ImageLike], *, batch_size: int | None = None,
                                original_size: bool = True, support: SupportSet | None = None) -> list[tuple]:
        """`predict`'s masks with each one's confidence, from the same head run.

        The confidence is the mean over the S x S pixels of |2p - 1|, p being `predict_proba`'s
        foreground probability: 1 when every pixel is decided with certainty, 0 when every pixel
        is a tie. Labelling tools sort predictions by it (least sure first).

        Returns:
            [(uint8 (H, W) mask, float confidence)], one per image (a list even for one image).
        """
        return self._run(_as_list(images), batch_size, original_size, proba=False, support=support, confidence=True)

    def _run_head(self, head, outputs, batch, support) -> list[np.ndarray]:
        try:
            return head.run(outputs, {self._io["head"].input("query"): batch, **support.features})
        except Exception as exc:  # onnxruntime raises its own (pybind) exception types
            if len(batch) == 1:
                raise
            # Exports made before the dynamic-batch fix bake batch 1 into Reshape shapes: serve
            # them one query per run instead of failing (and say so once).
            out = _batch_one_only(head, self._io["head"].input("query"), outputs, batch, support, exc)
            if self._batch_limit > 1:
                self._batch_limit = 1
                log.warning("the head graph in %s fails on batches of %d (%s); running one query per run from now "
                            "on; re-export with the current lfm-export for batched inference",
                            self.directory, len(batch), str(exc).splitlines()[0][:200])
            return out

    def head_batch(self, batch_size: int | None = None) -> int:
        """Queries per head run for a `predict(..., batch_size=batch_size)` call: `batch_size`
        (default: the Segmenter's), capped by the memory budget and by a graph found to run one
        query at a time."""
        batch_size = self.batch_size if batch_size is None else _check_batch_size(batch_size)
        return min(batch_size, self._batch_limit, self.max_head_batch or batch_size)

    def _run(self, images, batch_size, original_size: bool, proba: bool, support: SupportSet | None = None,
             confidence: bool = False):
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        batch_size = self.head_batch(batch_size)
        if support is not None and not isinstance(support, SupportSet):
            raise InputError(f"support must be a SupportSet from encode_support, not {type(support).__name__}")
        self._check_open()
        if support is None:
            support = self._support
            if support is None:
                raise InputError("no support set", api_hint="call set_support(images, masks) before predict",
                                 cli_hint="pass --support IMAGE:MASK")
        head = self._ensure_head()
        outputs = [self._io["head"].output("per_shot" if proba else "mask")]
        if confidence:
            outputs.append(self._io["head"].output("per_shot"))
        results: list = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            prepared = [self.preprocessing.image(item, describe(item, start + i, "query image"))
                        for i, item in enumerate(chunk)]
            batch = np.stack([arr for arr, _ in prepared])
            runs = self._run_head(head, outputs, batch, support)
            out = runs[0]
            if proba:
                out = _foreground_probability(out)
            sure = (2.0 * np.abs(_foreground_probability(runs[1]) - 0.5)).mean(axis=(1, 2)) if confidence else None
            for i, (row, (_, hw)) in enumerate(zip(out, prepared)):
                row = resize_mask_nearest(row, hw) if original_size else row
                results.append((row, float(sure[i])) if confidence else row)
        return results[0] if single else results


def _batch_one_only(head, query: str, outputs, batch, support, exc) -> list[np.ndarray]:
    """Run a batch row by row after a failed batched run; re-raise `exc` if that fails too."""
    try:
        rows = [head.run(outputs, {query: batch[i:i + 1], **support.features}) for i in range(len(batch))]
    except Exception:
        raise exc from None
    return [np.concatenate([row[k] for row in rows]) for k in range(len(outputs))]


def _foreground_probability(shot_logits: np.ndarray) -> np.ndarray:
    """(B, K, 2, S, S) logits -> (B, S, S) float32 mean over K of softmax(...)[foreground]."""
    diff = shot_logits[:, :, 1].astype(np.float32) - shot_logits[:, :, 0].astype(np.float32)
    # softmax([a, b])[1] = sigmoid(b - a) = (1 + tanh((b - a) / 2)) / 2, overflow-free.
    prob = 0.5 * (1.0 + np.tanh(0.5 * diff))
    return np.ascontiguousarray(prob.mean(axis=1), dtype=np.float32)


def _as_list(value) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)
