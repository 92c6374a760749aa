"""The artifact manifest: what an export directory holds and how to use it.

Pure Python (json + hashlib): written by `lfm_deploy.export`, read and verified by the
torch-free `lfm_deploy.runtime`. `read_manifest` checks every field a reader uses against a
small declarative schema (`MANIFEST_SCHEMA`) before anyone reads it, so a malformed manifest is
one `ManifestError` naming the field, never a KeyError or TypeError deep inside a consumer.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import ManifestError
from .utils.files import MAX_TEXT_BYTES, regular_file
from .utils.outputs import sha256_file

MANIFEST_NAME = "manifest.json"
#: Bumped when the layout changes incompatibly; readers refuse newer major versions.
SCHEMA_VERSION = 1

#: How weights that are not a real model are flagged (manifests, reports, logs, the CLI, the page).
UNTRAINED_LABEL = "UNTRAINED default (seeded random initialisation, not a trained model)"
SYNTHETIC_LABEL = ("SYNTHETIC-DATA default (its head and the backbone's last stage trained on lfm-make-data's "
                   "synthetic shapes, the rest of the backbone seeded random; not a real model)")
#: `weights.source` of the synthetic-data default (`lfm_deploy.pretrain`).
SYNTHETIC_SOURCE = "synthetic-default"


def weights_label(manifest: Mapping) -> str:
    """The warning label of a manifest's weights when they are not a real model, else "".

    The synthetic-data default (`weights.source` "synthetic-default") and the seeded untrained
    default both carry `untrained: true`; the label tells them apart.
    """
    if not manifest.get("untrained"):
        return ""
    source = (manifest.get("weights") or {}).get("source")
    return SYNTHETIC_LABEL if source == SYNTHETIC_SOURCE else UNTRAINED_LABEL


#: What fixes a malformed manifest, for API callers and on the command line alike.
_HINTS = {"api_hint": "re-run lfm-export"}


# -- schema -------------------------------------------------------------------------------------
# A schema is a tree of specs. Each spec checks one JSON value and appends a problem
# "<where> must be <what>, got <value>" for each violation; containers recurse. Only stdlib: the
# runtime imports with numpy, onnxruntime and Pillow alone.

def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__)


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _child(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


class Spec:
    """One JSON value's expected shape. Subclasses set `expected` and implement `_check`."""

    expected = "a value"
    #: The Python types of the JSON values this spec accepts (bool is never an int here).
    types: tuple = (object,)

    def type_ok(self, value: Any) -> bool:
        """Whether `value` has the spec's JSON type (its constraints are not checked)."""
        return isinstance(value, self.types) and not (isinstance(value, bool) and bool not in self.types)

    def check(self, value: Any, where: str, problems: list[str]) -> None:
        if not self.type_ok(value):
            self._wrong_type(value, where, problems)
        else:
            self._check(value, where, problems)

    def _check(self, value: Any, where: str, problems: list[str]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _wrong_type(self, value: Any, where: str, problems: list[str]) -> None:
        problems.append(f"{where} must be {self.expected}, got {_json_type(value)}")


class Anything(Spec):
    """Any JSON value (fields a reader only tests for truth)."""

    def type_ok(self, value):
        return True

    def _check(self, value, where, problems):
        pass


class Bool(Spec):
    expected = "a boolean"
    types = (bool,)

    def _check(self, value, where, problems):
        pass


class Int(Spec):
    """An integer (JSON true/false are not integers) within [min, max]."""

    types = (int,)

    def __init__(self, min: int | None = None, max: int | None = None):
        self.min, self.max = min, max
        bounds = [f">= {min}"] * (min is not None) + [f"<= {max}"] * (max is not None)
        self.expected = "an integer" + (" " + " and ".join(bounds) if bounds else "")

    def _check(self, value, where, problems):
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            problems.append(f"{where} must be {self.expected}, got {_show(value)}")


class Number(Spec):
    """A finite number (int or float) within the bounds."""

    types = (int, float)

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False):
        self.min, self.max, self.min_open = min, max, min_open
        bounds = ([f"{'>' if min_open else '>='} {min}"] if min is not None else []) + (
            [f"<= {max}"] if max is not None else [])
        self.expected = "a finite number" + (" " + " and ".join(bounds) if bounds else "")

    def _check(self, value, where, problems):
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond float range
            finite = False
        low = self.min is not None and (value <= self.min if self.min_open else value < self.min)
        high = self.max is not None and value > self.max
        if not finite or low or high:
            problems.append(f"{where} must be {self.expected}, got {_show(value)}")


class Str(Spec):
    """A string: non-empty, optionally one of `choices` or matching `pattern` (described as `what`)."""

    types = (str,)

    def __init__(self, choices: Iterable[str] | None = None, pattern: str | None = None, what: str | None = None,
                 nonempty: bool = True):
        self.choices = tuple(choices) if choices is not None else None
        self.pattern = re.compile(pattern) if pattern else None
        self.what = what
        self.nonempty = nonempty
        self.expected = "a string"

    def _check(self, value, where, problems):
        if self.choices is not None and value not in self.choices:
            problems.append(f"{where} must be one of {', '.join(map(repr, self.choices))}, got {_show(value)}")
        elif self.pattern is not None and not self.pattern.fullmatch(value):
            problems.append(f"{where} must be {self.what or 'a string matching ' + self.pattern.pattern}, got {_show(value)}")
        elif self.nonempty and not value:
            problems.append(f"{where} must be a non-empty string")


class RelPath(Str):
    """A file path relative to the artifact directory that stays inside it.

    Absolute paths (POSIX or Windows, drive letters included) and '..' components are refused.
    The check is lexical: a symbolic link inside the directory is the user's deliberate choice
    (the hashes are checked on whatever it points to).
    """

    def _check(self, value, where, problems):
        why = unsafe_relpath(value)
        if why:
            problems.append(f"{where} {_show(value)} {why}")


def unsafe_relpath(rel: str) -> str | None:
    """Why `rel` cannot name a file inside the artifact directory (None when it can)."""
    parts = re.split(r"[\\/]+", rel)
    if "\0" in rel:
        return "contains a NUL character"
    if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        return "is an absolute path; files must be inside the artifact directory"
    if ".." in parts:
        return "leaves the artifact directory ('..'); files must be inside it"
    if not [p for p in parts if p not in ("", ".")]:
        return "does not name a file"
    return None


class Nullable(Spec):
    """`inner` or null."""

    def __init__(self, inner: Spec):
        self.inner = inner
        self.expected = f"{inner.expected} or null"

    def type_ok(self, value):
        return value is None or self.inner.type_ok(value)

    def _check(self, value, where, problems):
        if value is not None:
            self.inner.check(value, where, problems)


class Either(Spec):
    """A value of one of the `options`' types, checked by the first option whose type fits."""

    def __init__(self, *options: Spec):
        self.options = options
        self.expected = " or ".join(o.expected for o in options)

    def type_ok(self, value):
        return any(o.type_ok(value) for o in self.options)

    def _check(self, value, where, problems):
        next(o for o in self.options if o.type_ok(value)).check(value, where, problems)


class ListOf(Spec):
    """A list of `item`s, of exactly `length` items or at least `min_length`."""

    def __init__(self, item: Spec, length: int | None = None, min_length: int = 0):
        self.item, self.length, self.min_length = item, length, min_length
        self.expected = "a list" + (f" of {length} items" if length is not None else
                                    f" of at least {min_length} item{'s' * (min_length != 1)}" if min_length else "")

    types = (list,)

    def _check(self, value, where, problems):
        if (self.length is not None and len(value) != self.length) or len(value) < self.min_length:
            problems.append(f"{where} must be {self.expected}, got {len(value)}")
            return
        for i, item in enumerate(value):
            self.item.check(item, f"{where}[{i}]", problems)


class Obj(Spec):
    """A JSON object with `required` and `optional` fields; other keys are allowed (and ignored)."""

    expected = "an object"
    types = (dict,)

    def __init__(self, required: Mapping[str, Spec] | None = None, optional: Mapping[str, Spec] | None = None):
        self.required = dict(required or {})
        self.optional = dict(optional or {})

    def _check(self, value, where, problems):
        for key, spec in self.required.items():
            if key not in value:
                problems.append(f"{_child(where, key)} is missing")
            else:
                spec.check(value[key], _child(where, key), problems)
        for key, spec in self.optional.items():
            if key in value:
                spec.check(value[key], _child(where, key), problems)


class MapOf(Spec):
    """A JSON object mapping names to `value`s, which must hold the `required` names."""

    expected = "an object"
    types = (dict,)

    def __init__(self, value: Spec, required: Iterable[str] = (), min_length: int = 0):
        self.value, self.required, self.min_length = value, tuple(required), min_length

    def _check(self, value, where, problems):
        for key in self.required:
            if key not in value:
                problems.append(f"{where}[{key!r}] is missing")
        if len(value) < self.min_length:
            problems.append(f"{where} must list at least {self.min_length} entr{'y' if self.min_length == 1 else 'ies'}")
        for key, item in value.items():
            self.value.check(item, f"{where}[{key!r}]", problems)


#: A graph input or output (`lfm_deploy.contract.TensorSpec.to_dict`).
TENSOR_SCHEMA = Obj(
    required={"name": Str(), "dtype": Str(), "shape": ListOf(Either(Int(min=1), Str()))},
    optional={"description": Str(nonempty=False)},
)
#: One exported graph: its file and its tensor contract.
GRAPH_SCHEMA = Obj(required={"file": RelPath(), "inputs": ListOf(TENSOR_SCHEMA, min_length=1),
                             "outputs": ListOf(TENSOR_SCHEMA, min_length=1)})
#: One file of the export, verified before use.
FILE_SCHEMA = Obj(required={"path": RelPath(), "bytes": Int(min=0),
                            "sha256": Str(pattern=r"[0-9a-f]{64}", what="64 lowercase hex digits")})
#: The preprocessing contract (`Domain.preprocessing`); optional keys have the CD-FSS defaults.
PREPROCESSING_SCHEMA = Obj(
    required={"mean": ListOf(Number(), length=3), "std": ListOf(Number(min=0, min_open=True), length=3)},
    optional={"image_size": ListOf(Int(min=1), length=2), "color": Str(choices=("rgb", "grayscale")),
              "scale": Number(min=0, min_open=True), "mask_threshold": Int(min=0, max=255),
              "image_resize": Str(), "mask_resize": Str()},
)
#: Where the weights came from (`WeightsInfo.to_dict`): what the parity reference is rebuilt from.
WEIGHTS_SCHEMA = Obj(
    required={"checkpoint": Nullable(Str()), "masker": Nullable(Str()), "seed": Nullable(Int())},
    optional={"source": Str(), "learner": Nullable(Str()), "learner_sha256": Nullable(Str()),
              "recipe": Nullable(Anything())},
)
#: The export's parity tolerances (`lfm_deploy.parity.compare.Tolerances.from_manifest`).
TOLERANCES_SCHEMA = Obj(optional={"logits_atol": Number(min=0), "feature_rel": Number(min=0),
                                  "mask_agreement": Number(min=0, max=1), "mask_tie_margin": Number(min=0)})
#: Every field a reader of the manifest uses (runtime, parity, engines, CLI, benchmarks).
MANIFEST_SCHEMA = Obj(
    required={
        "schema_version": Int(min=1, max=SCHEMA_VERSION),
        "domain": Str(),
        "variant": Str(),
        "apm": Str(choices=("m", "s", "none")),
        "acpa": Bool(),
        "lowering": Str(choices=("matmul", "dft")),
        "opset": Int(min=1),
        "shots": Int(min=1),
        "image_size": Int(min=1),
        "preprocessing": PREPROCESSING_SCHEMA,
        "graphs": MapOf(GRAPH_SCHEMA, required=("episode",)),
        "files": MapOf(FILE_SCHEMA, min_length=1),
        "weights": WEIGHTS_SCHEMA,
        "untrained": Bool(),
    },
    optional={"tolerances": TOLERANCES_SCHEMA, "created_by": Str(), "warning": Str(), "engines": Anything()},
)


def manifest_problems(manifest: Any) -> list[str]:
    """Every way `manifest` differs from `MANIFEST_SCHEMA`, plus cross-field checks (empty if valid).

    Cross-field: every graph file is listed (with size and sha256) in `files`.
    """
    if not isinstance(manifest, dict):
        return [f"the manifest must be a JSON object, got {_json_type(manifest)}"]
    problems: list[str] = []
    MANIFEST_SCHEMA.check(manifest, "", problems)
    if problems:
        return problems
    listed = {entry["path"] for entry in manifest["files"].values()}
    for name, graph in manifest["graphs"].items():
        if graph["file"] not in listed:
            problems.append(f"graphs[{name!r}].file {graph['file']!r} is not listed with a hash in files")
    return problems


def check_manifest(manifest: Any, source: str = MANIFEST_NAME) -> dict:
    """Check a parsed manifest against the schema; return it unchanged.

    Args:
        manifest: the parsed JSON.
        source: what to name in errors (the manifest's path).

    Raises:
        ManifestError: one error listing every malformed field (at most five shown).
    """
    problems = manifest_problems(manifest)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ManifestError(f"{source}: {shown}", **_HINTS)
    return manifest


# -- reading and writing ------------------------------------------------------------------------

def write_manifest(directory: str | os.PathLike, manifest: dict) -> Path:
    """Write `manifest.json` (sorted keys, stable formatting) into `directory`."""
    path = Path(directory) / MANIFEST_NAME
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def read_manifest(directory: str | os.PathLike, verify_files: bool = True) -> dict:
    """Read and validate an artifact directory's manifest.

    Every field a reader uses is checked for presence and type (`MANIFEST_SCHEMA`); file paths
    must stay inside the directory.

    Args:
        directory: the export directory.
        verify_files: check every listed file's size and sha256 (refuses tampered or truncated
            models).

    Returns:
        the manifest, as parsed.

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
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8, huge integers
        raise ManifestError(f"{path} is not valid JSON ({str(exc)[:200]}); re-run lfm-export") from None
    if not isinstance(manifest, dict) or "schema_version" not in manifest:
        raise ManifestError(f"{path} is not an lfm-deploy manifest (no schema_version)")
    version = manifest["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION or version < 1:
        raise ManifestError(
            f"{path} has schema version {_show(version)}, this lfm-deploy reads version {SCHEMA_VERSION}; "
            "re-export with this version or upgrade lfm-deploy"
        )
    check_manifest(manifest, str(path))
    if verify_files:
        for entry in manifest["files"].values():
            verify_file(directory, entry)
    return manifest


def file_entry(directory: str | os.PathLike, relpath: str) -> dict:
    """A manifest entry for a file: path relative to the directory, size and sha256."""
    full = regular_file(Path(directory) / relpath, "file", error=ManifestError, hint="re-run lfm-export")
    return {"path": relpath, "bytes": full.stat().st_size, "sha256": sha256_file(full)}


def verify_file(directory: str | os.PathLike, entry: dict) -> Path:
    """Check one file entry against the disk; return its path.

    Raises:
        ManifestError: a malformed entry, a path outside the directory, or a file that is
            missing, truncated or modified.
    """
    problems: list[str] = []
    FILE_SCHEMA.check(entry, "file entry", problems)
    if problems:
        raise ManifestError("; ".join(problems), **_HINTS)
    full = Path(directory) / entry["path"]
    if not os.path.exists(full):  # (a dangling link too)
        raise ManifestError(f"{full} is listed in the manifest but missing; re-run lfm-export")
    # A FIFO or a device (also behind a link) is refused before it is hashed: a FIFO would block,
    # a device never ends. The size is checked against the manifest's below.
    regular_file(full, "listed file", error=ManifestError, hint="re-run lfm-export")
    if full.stat().st_size != entry["bytes"]:
        raise ManifestError(
            f"{full} has {full.stat().st_size} bytes, the manifest says {entry['bytes']}: the file is truncated "
            "or replaced; re-run lfm-export"
        )
    if sha256_file(full) != entry["sha256"]:
        raise ManifestError(f"{full} does not match its sha256 in the manifest: it was modified; re-run lfm-export")
    return full


__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA",
    "SCHEMA_VERSION",
    "check_manifest",
    "file_entry",
    "manifest_problems",
    "read_manifest",
    "sha256_file",
    "verify_file",
    "write_manifest",
]
