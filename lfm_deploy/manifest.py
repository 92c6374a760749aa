"""The artifact manifest: what an export directory holds and how to use it.

Pure Python (json + hashlib): built and written by `lfm_deploy.export`, read and verified by
the torch-free `lfm_deploy.runtime`. `read_manifest` parses the JSON once into an immutable
`Manifest` (`lfm_deploy.utils.records`), so a malformed manifest is one `ManifestError` naming
the field, never a KeyError or TypeError deep inside a consumer that reads the dict.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from .contract import GraphIO, graph_io
from .errors import ManifestError
from .utils.files import MAX_TEXT_BYTES, regular_file, unsafe_relpath
from .utils.outputs import sha256_file
from .utils.records import Meta, parse, show, to_json

MANIFEST_NAME = "manifest.json"
#: Bumped when the layout changes incompatibly; readers refuse newer major versions.
SCHEMA_VERSION = 1

#: How weights that are not a real model are flagged (manifests, reports, logs, the CLI, the page).
UNTRAINED_LABEL = "UNTRAINED default (seeded random initialisation, not a trained model)"
SYNTHETIC_LABEL = ("SYNTHETIC-DATA default (its head and the backbone's last stage trained on lfm-make-data's "
                   "synthetic shapes, the rest of the backbone seeded random; not a real model)")
#: `weights.source` of the synthetic-data default (`lfm_deploy.pretrain`).
SYNTHETIC_SOURCE = "synthetic-default"


def weights_label(manifest: "Manifest") -> str:
    """The warning label of a manifest's weights when they are not a real model, else "".

    The synthetic-data default (`weights.source` "synthetic-default") and the seeded untrained
    default both carry `untrained: true`; the label tells them apart.
    """
    if not manifest.untrained:
        return ""
    return SYNTHETIC_LABEL if manifest.weights.source == SYNTHETIC_SOURCE else UNTRAINED_LABEL


#: What fixes a malformed manifest, for API callers and on the command line alike.
_HINTS = {"api_hint": "re-run lfm-export"}

# -- the records ------------------------------------------------------------------------------
# What each JSON value must be is said once, by the annotations (`lfm_deploy.utils.records`).

Name = Annotated[str, Meta(min_length=1)]
RelPath = Annotated[str, Meta(check=unsafe_relpath)]
PositiveInt = Annotated[int, Meta(ge=1)]
Tolerance = Annotated[float, Meta(ge=0)]


@dataclass(frozen=True)
class FileEntry:
    """One file of the export (a path inside the directory), verified before use."""

    path: RelPath
    bytes: Annotated[int, Meta(ge=0)]
    sha256: Annotated[str, Meta(pattern=r"[0-9a-f]{64}", what="64 lowercase hex digits")]


@dataclass(frozen=True)
class PreprocessingSpec:
    """The preprocessing contract (`Domain.preprocessing`); the optional keys have the CD-FSS defaults."""

    mean: Annotated[tuple[float, ...], Meta(length=3)]
    std: Annotated[tuple[Annotated[float, Meta(gt=0)], ...], Meta(length=3)]
    image_size: Annotated[tuple[PositiveInt, ...], Meta(length=2)] | None = None
    color: Literal["rgb", "grayscale"] = "rgb"
    scale: Annotated[float, Meta(gt=0)] = 1.0 / 255.0
    mask_threshold: Annotated[int, Meta(ge=0, le=255)] = 128
    image_resize: str | None = None
    mask_resize: str | None = None


@dataclass(frozen=True)
class WeightsRecord:
    """Where the weights came from (`WeightsInfo.to_dict`): what the parity reference is rebuilt from."""

    checkpoint: Name | None
    masker: Name | None
    seed: int | None
    source: Name | None = None
    untrained: bool | None = None
    checkpoint_sha256: str | None = None
    checkpoint_kind: str | None = None
    masker_sha256: str | None = None
    masker_meta: Any = None
    learner: Name | None = None
    learner_sha256: str | None = None
    recipe: Any = None


@dataclass(frozen=True)
class ParityTolerances:
    """The export's float32 parity tolerances (`lfm_deploy.parity.compare.Tolerances.from_manifest`)."""

    logits_atol: Tolerance = 1e-3
    feature_rel: Tolerance = 1e-4
    mask_agreement: Annotated[float, Meta(ge=0, le=1)] = 0.999
    mask_tie_margin: Tolerance | None = None


@dataclass(frozen=True)
class ParityRecord:
    """The export's validation against the eager model (`OutputCheck.to_dict` per output)."""

    validated: bool
    passed: bool
    checks: tuple[Any, ...] = ()
    acpa_sign_case: Any = None


@dataclass(frozen=True)
class PrecisionRuntime:
    """How the gated path runs: the backend, its precision, OpenVINO bf16's float32 islands."""

    backend: Name
    precision: Name
    f32_islands: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PrecisionGate:
    """A reduced-precision gate's verdict (`PrecisionResult.to_manifest`); `runs` per gated path."""

    passed: bool
    thresholds: Any = None
    evidence: Any = None
    episodes: Any = None
    runs: tuple[Any, ...] = ()


@dataclass(frozen=True)
class PrecisionRecord:
    """The precision the runtime serves: "fp32", or an `lfm-export --precision` result with its gate.

    `graphs` names the reduced-precision files (inside the directory, listed in `files`).
    """

    name: Literal["fp32", "fp16", "bf16", "int8"]
    runtime: PrecisionRuntime
    calibration: str | None = None
    gate: PrecisionGate | None = None
    graphs: Mapping[str, RelPath] | None = None
    details: Any = None


FP32 = PrecisionRecord("fp32", PrecisionRuntime("onnxruntime", "fp32"))


@dataclass(frozen=True)
class Manifest:
    """An artifact directory's manifest, parsed and checked once (`read_manifest`), immutable.

    Readers use its attributes; writers build one and `write_manifest` it (the same definition
    both ways). Every file it names (graphs, reference graphs, reduced-precision graphs) is inside
    the directory and listed with its size and sha256 in `files`.
    """

    schema_version: Annotated[int, Meta(ge=1, le=SCHEMA_VERSION)]
    domain: Name
    variant: Name
    apm: Literal["m", "s", "none"]
    acpa: bool
    lowering: Literal["matmul", "dft"]
    opset: PositiveInt
    shots: PositiveInt
    image_size: PositiveInt
    preprocessing: PreprocessingSpec
    graphs: Mapping[str, GraphIO]
    files: Mapping[str, FileEntry]
    weights: WeightsRecord
    untrained: bool
    created_by: Name | None = None
    warning: Name | None = None
    #: The precision served; None: an export from before precisions were recorded (fp32).
    precision: PrecisionRecord | None = None
    #: {graph: file} of the validated float32 graphs (a reduced-precision export's `graphs` name others).
    reference_graphs: Mapping[str, RelPath] | None = None
    tolerances: ParityTolerances | None = None
    parity: ParityRecord | None = None
    #: How the head graph makes the 4D correlation, which sets its memory per query
    #: (`lfm_deploy.runtime.memory`): "per-feature" (each product convolved as soon as it is made,
    #: the cached shots shared by every query, `LayoutLearner`) or "stacked" (all products held at
    #: once); None: an export from before this was recorded, which stacks them.
    correlation: Literal["per-feature", "stacked"] | None = None
    #: The export's inputs ({"checkpoint"/"masker": {path, sha256} or null}), library versions,
    #: TensorRT lint and engines: records for people, which no reader checks.
    inputs: Any = None
    versions: Any = None
    tensorrt_lint: Any = None
    engines: Any = None

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST_NAME) -> "Manifest":
        """Parse and check a manifest's JSON.

        Raises:
            ManifestError: one error naming every malformed field (at most five shown).
        """
        if not isinstance(data, dict) or "schema_version" not in data:
            raise ManifestError(f"{source} is not an lfm-deploy manifest (no schema_version)")
        version = data["schema_version"]
        if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION or version < 1:
            raise ManifestError(f"{source} has schema version {show(version)}, this lfm-deploy reads version "
                                f"{SCHEMA_VERSION}; re-export with this version or upgrade lfm-deploy")
        problems: list[str] = []
        try:
            manifest = parse(cls, data, "", problems)
        except RecursionError:  # JSON nested about as deep as the parser allows
            raise ManifestError(f"{source} is nested too deeply to be a manifest", **_HINTS) from None
        if manifest is not None:
            problems += manifest._cross_problems()
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise ManifestError(f"{source}: {shown}", **_HINTS)
        return manifest

    def _cross_problems(self) -> list[str]:
        problems = []
        if "episode" not in self.graphs:
            problems.append("graphs['episode'] is missing")
        if not self.files:
            problems.append("files must list at least 1 entry")
        size = self.preprocessing.image_size
        if size is not None and list(size) != [self.image_size, self.image_size]:
            problems.append(f"preprocessing.image_size {list(size)} differs from image_size {self.image_size}")
        listed = {entry.path for entry in self.files.values()}
        for where, rel in self.referenced_files().items():
            if rel not in listed:
                problems.append(f"{where} {rel!r} is not listed with a hash in files")
        return problems

    def referenced_files(self) -> dict[str, str]:
        """{field: path} of every file the manifest names outside `files` (all must be listed there)."""
        named = {f"graphs[{g!r}].file": io.file for g, io in self.graphs.items()}
        named.update({f"reference_graphs[{g!r}]": rel for g, rel in (self.reference_graphs or {}).items()})
        if self.precision is not None:
            named.update({f"precision.graphs[{g!r}]": rel for g, rel in (self.precision.graphs or {}).items()})
        return named

    def to_dict(self) -> dict:
        """The manifest as JSON (what `write_manifest` writes)."""
        return to_json(self)

    @property
    def served_precision(self) -> PrecisionRecord:
        """The precision the runtime serves (fp32 for exports that record none)."""
        return self.precision or FP32

    def io(self, graph: str) -> GraphIO:
        """One graph's contract, its tensors addressable by role (`lfm_deploy.contract.graph_io`)."""
        return graph_io(self.graphs, graph)

    def float32_file(self, graph: str) -> str:
        """The validated float32 file of `graph` (a reduced-precision export's `graphs` name others)."""
        return (self.reference_graphs or {}).get(graph, self.graphs[graph].file)

    @property
    def weights_label(self) -> str:
        """How not-real weights are flagged (`weights_label`), else ""."""
        return weights_label(self)


# -- reading and writing ------------------------------------------------------------------------

def write_manifest(directory: str | os.PathLike, manifest: Manifest) -> Path:
    """Write `manifest.json` (sorted keys, stable formatting) into `directory`."""
    path = Path(directory) / MANIFEST_NAME
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def read_manifest(directory: str | os.PathLike, verify_files: bool = True) -> Manifest:
    """Read and validate an artifact directory's manifest.

    Every field a reader uses is checked for presence and type (`Manifest`); every file it names
    must stay inside the directory and be listed with its size and sha256.

    Args:
        directory: the export directory.
        verify_files: check every listed file's size and sha256 (refuses tampered or truncated
            models).

    Returns:
        the `Manifest`.

    Raises:
        ManifestError: missing or unreadable manifest, incompatible schema, a malformed field
            (named), missing or modified files; a manifest or listed file that is not a regular
            file (a FIFO, device or socket, also behind a link) is refused without being read.
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if directory.exists() and not directory.is_dir():  # a file is not "not found"
        raise ManifestError(f"{directory} is a file, not an artifact directory; pass the folder lfm-export wrote")
    if not directory.is_dir():
        raise ManifestError(f"artifact directory not found: {directory}; run lfm-export first")
    if path.is_dir():
        raise ManifestError(f"{path} is a directory, not a manifest file; re-run lfm-export")
    if not os.path.lexists(path):
        raise ManifestError(f"{directory} has no {MANIFEST_NAME}; it is not a complete lfm-export output (re-run lfm-export)")
    # A FIFO, a device or a socket (also behind a link) is refused, never read (a FIFO would block).
    regular_file(path, "manifest", MAX_TEXT_BYTES, error=ManifestError, hint="re-run lfm-export")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8, huge integers
        raise ManifestError(f"{path} is not valid JSON ({str(exc)[:200]}); re-run lfm-export") from None
    manifest = Manifest.from_dict(data, str(path))
    if verify_files:
        for entry in manifest.files.values():
            verify_file(directory, entry)
    return manifest


def file_entry(directory: str | os.PathLike, relpath: str) -> FileEntry:
    """A manifest entry for a file: path relative to the directory, size and sha256."""
    full = regular_file(Path(directory) / relpath, "file", error=ManifestError, hint="re-run lfm-export")
    return FileEntry(relpath, full.stat().st_size, sha256_file(full))


def verify_file(directory: str | os.PathLike, entry: FileEntry) -> Path:
    """Check one file entry against the disk; return its path.

    Raises:
        ManifestError: a path outside the directory, or a file that is missing, truncated or
            modified.
    """
    why = unsafe_relpath(entry.path)
    if why:
        raise ManifestError(f"file entry path {show(entry.path)} {why}", **_HINTS)
    full = Path(directory) / entry.path
    if not os.path.exists(full):  # (a dangling link too)
        raise ManifestError(f"{full} is listed in the manifest but missing; re-run lfm-export")
    # A FIFO or a device (also behind a link) is refused before it is hashed: a FIFO would block,
    # a device never ends. The size is checked against the manifest's below.
    regular_file(full, "listed file", error=ManifestError, hint="re-run lfm-export")
    if full.stat().st_size != entry.bytes:
        raise ManifestError(
            f"{full} has {full.stat().st_size} bytes, the manifest says {entry.bytes}: the file is truncated "
            "or replaced; re-run lfm-export"
        )
    if sha256_file(full) != entry.sha256:
        raise ManifestError(f"{full} does not match its sha256 in the manifest: it was modified; re-run lfm-export")
    return full


__all__ = ["FP32", "MANIFEST_NAME", "SCHEMA_VERSION", "FileEntry", "Manifest", "ParityRecord", "ParityTolerances",
           "PrecisionGate", "PrecisionRecord", "PrecisionRuntime", "PreprocessingSpec", "WeightsRecord", "file_entry",
           "read_manifest", "sha256_file", "verify_file", "weights_label", "write_manifest"]
