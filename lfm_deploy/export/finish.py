"""The torch-free half of exporting a graph: simplify, deduplicate, stamp the contract, check
and save; in the exporting process, or in background processes while the next graph is traced.

onnxslim is pure Python and takes most of an export's time (about 20 of the 24 s that tracing
and simplifying the three graphs take at 160 px on 2 cores), and torch's tracing is mostly
single-threaded too. `GraphFinisher` hands each traced graph to a worker process, so one graph
is simplified while the next one is traced and two are simplified at once: the same bytes,
sooner (a whole 160 px export: 27 s -> 20 s on 2 cores).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Sequence

import onnx

from ..contract import TensorSpec
from ..errors import ExportError
from ..utils.outputs import disk_fault

log = logging.getLogger(__name__)

DYNAMIC_DIMS = ("B", "N")

#: Most background processes a `GraphFinisher` starts (each holds a copy of a ~100 MB graph).
MAX_WORKERS = 2


@contextlib.contextmanager
def quiet():
    """Silence warnings and stdout chatter (onnxslim's, the exporters') unless debugging."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def finish_graph(model: onnx.ModelProto, path: str | os.PathLike, specs: Sequence[TensorSpec], *,
                 simplify: bool = True) -> onnx.ModelProto:
    """Simplify (onnxslim), deduplicate initializers, stamp the contract's shapes, check, save.

    Args:
        model: the exporter's graph (changed in place).
        path: the .onnx file to write (self-contained, no external data).
        specs: the contract's inputs and outputs.
        simplify: fold constants and remove redundant nodes with onnxslim.

    Returns:
        The written model.

    Raises:
        ExportError: the ONNX checker rejected the graph.
    """
    path = Path(path)
    if simplify:
        model = _simplify(model)
    _dedupe_initializers(model)
    # Stable metadata so that re-exports of the same inputs give byte-identical files.
    model.producer_name = "lfm-deploy"
    model.doc_string = ""
    _apply_contract_shapes(model, specs)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ExportError(f"the ONNX checker rejected {path.name}: {str(exc)[:500]}") from exc
    onnx.save_model(model, str(path), save_as_external_data=False)
    return model


def default_workers() -> int:
    """Background processes worth starting: none on a single CPU, else up to `MAX_WORKERS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return 0 if cpus < 2 else min(MAX_WORKERS, cpus)


class GraphFinisher:
    """Finishes traced graphs (`finish_graph`) in background processes while the caller goes on.

    Use it as a context manager around the exports. `submit` returns at once (after waiting for
    a free worker); `wait` returns when every submitted graph is written and raises
    `ExportError` for the first that failed. Leaving the block waits for the graphs, or, on an
    error or Ctrl-C, stops the workers at once; what they were writing lies in the caller's
    temporary directory, which the caller removes.

    Each worker is a fresh `python -m lfm_deploy.export.finish` process that reads the traced
    graph from a new temporary file beside its destination and deletes it: nothing is forked from a process
    holding torch's threads, and the caller's own script is never imported again (which
    multiprocessing's spawn start would do). A SIGINT or SIGTERM of the caller stops the workers
    on leaving the block; a worker whose caller was killed outright exits by itself within
    half a second. A worker that cannot write (a full disk) is reported as that `OSError`.

    Args:
        workers: background processes at a time; 0 finishes each graph inside `submit`.
            Default: `default_workers()`.
    """

    def __init__(self, workers: int | None = None):
        self.workers = default_workers() if workers is None else int(workers)
        self._running: list[tuple[subprocess.Popen, Path, Path]] = []

    def submit(self, model: onnx.ModelProto, path: str | os.PathLike, specs: Sequence[TensorSpec], *,
               simplify: bool = True) -> None:
        path = Path(path)
        if self.workers < 1:
            finish_graph(model, path, specs, simplify=simplify)
            return
        while len(self._running) >= self.workers:  # wait for a free worker, whichever finishes first
            done = [job for job in self._running if job[0].poll() is not None]
            if not done:
                time.sleep(0.05)
            for job in done:
                self._running.remove(job)
                self._reap(job)
        # Fresh names (created here, never an existing file): the only files _reap/_stop delete.
        traced, log_file = (_new_file(path, suffix) for suffix in (".traced", ".log"))
        traced.write_bytes(model.SerializeToString())
        job = json.dumps({"traced": str(traced), "path": str(path), "simplify": simplify,
                          "specs": [s.to_dict() for s in specs], "parent": os.getpid()})
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
        with open(log_file, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", __name__, job], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, env=env)
        self._running.append((proc, traced, log_file))

    def wait(self) -> None:
        running, self._running = self._running, []
        try:
            while running:
                self._reap(running.pop(0))
        finally:
            self._running = running + self._running

    def _reap(self, job) -> None:
        proc, traced, log_file = job
        code = proc.wait()
        try:
            message = log_file.read_text(errors="replace").strip()
        finally:
            log_file.unlink(missing_ok=True)
            traced.unlink(missing_ok=True)
        name = traced.name[1:].split(".onnx.", 1)[0] + ".onnx"
        if code == _OS_ERROR:  # e.g. no space left: raised here as the OSError it was (the caller reports it)
            try:
                number, text, filename = json.loads(message.splitlines()[-1])
            except (ValueError, IndexError, TypeError):
                number, text, filename = None, message[-500:], None
            error = OSError(number, text, filename)
            if disk_fault(error):
                raise error
            raise ExportError(f"writing {name} failed in its worker process: {text} ({filename})")
        if code == _USER_ERROR:  # an ExportError raised by finish_graph: its message, as JSON on the last line
            last = message.splitlines()[-1] if message else ""
            try:
                raise ExportError(str(json.loads(last)))
            except json.JSONDecodeError:
                raise ExportError(last or f"finishing {name} failed") from None
        if code != 0:
            raise ExportError(f"simplifying and checking {name} failed in its worker process (exit code {code}): "
                              f"{message[-1500:] or 'no output'}")

    def _stop(self) -> None:
        running, self._running = self._running, []
        for proc, _, _ in running:
            proc.kill()
        for proc, traced, log_file in running:
            proc.wait()
            traced.unlink(missing_ok=True)
            log_file.unlink(missing_ok=True)

    def __enter__(self) -> "GraphFinisher":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            self._stop()


#: Exit code of a worker whose graph failed with an ExportError (its message is the last line).
_USER_ERROR = 3
#: Exit code of a worker that could not write (the OSError's [errno, strerror, filename] is the last line).
_OS_ERROR = 4
#: How often a worker checks that the process that started it is still alive (seconds).
_PARENT_CHECK = 0.5
#: The folder holding the lfm_deploy package, for the workers' import path.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def _new_file(path: Path, suffix: str) -> Path:
    """A new, empty, uniquely named file beside `path` (".<name>.<random><suffix>")."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def _exit_with_parent(parent: int) -> None:
    """Stop this worker when the process that started it is gone (killed outright: SIGKILL, the
    OOM killer), so no worker writes on into a folder nobody owns any more."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_CHECK)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="lfm-parent-watch").start()


def _worker(job: str) -> int:
    spec = json.loads(job)
    if spec.get("parent"):
        _exit_with_parent(int(spec["parent"]))
    try:
        traced = Path(spec["traced"])
        model = onnx.load_model(str(traced))
        traced.unlink()
        specs = [TensorSpec.from_dict(s) for s in spec["specs"]]
        finish_graph(model, spec["path"], specs, simplify=spec["simplify"])
    except ExportError as exc:
        print(json.dumps(str(exc)), file=sys.stderr)
        return _USER_ERROR
    except OSError as exc:
        print(json.dumps([exc.errno, exc.strerror or str(exc), exc.filename]), file=sys.stderr)
        return _OS_ERROR
    return 0


def _dedupe_initializers(model: onnx.ModelProto) -> int:
    """Keep one copy of byte-identical initializers; returns the bytes saved.

    The TorchScript exporter folds BatchNorm into each Conv call site, so a backbone applied to
    the query and to the support lands in the file twice (~95 MB each).
    """
    import hashlib

    graph = model.graph
    canonical: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep = []
    saved = 0
    for init in graph.initializer:
        data = init.raw_data if init.HasField("raw_data") else init.SerializeToString()
        key = (init.data_type, tuple(init.dims), hashlib.sha256(data).hexdigest())
        if key in canonical:
            rename[init.name] = canonical[key]
            saved += len(data)
        else:
            canonical[key] = init.name
            keep.append(init)
    if not rename:
        return 0
    graph_inputs = {i.name for i in graph.input}
    if graph_inputs & set(rename):  # initializers that double as graph inputs must stay
        return 0
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for value in list(graph.value_info):
        if value.name in rename:
            graph.value_info.remove(value)
    log.debug("deduplicated %d initializers (%.1f MB)", len(rename), saved / 1e6)
    return saved


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxslim
    except ImportError:  # optional: simplification is a speed/size nicety, not correctness
        log.info("onnxslim is not installed; skipping graph simplification")
        return model
    with quiet():
        return onnxslim.slim(model)


def _apply_contract_shapes(model: onnx.ModelProto, specs: list[TensorSpec]) -> None:
    """Write the contract's shapes onto the graph's inputs and outputs.

    Dynamic dims get the contract's names ("B"/"N") whatever the exporter called them, and
    static dims their values: the TorchScript exporter leaves output dims computed through
    Resize symbolic (e.g. "Resizelogits_dim_1"), which would hide the static contract from
    consumers such as TensorRT and Triton.
    """
    by_name = {s.name: s for s in specs}
    for value in list(model.graph.input) + list(model.graph.output):
        spec = by_name.get(value.name)
        if spec is None:
            continue
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in spec.shape:
            dim = shape.dim.add()
            if d in DYNAMIC_DIMS:
                dim.dim_param = d
            else:
                dim.dim_value = int(d)


if __name__ == "__main__":  # a GraphFinisher worker: python -m lfm_deploy.export.finish JOB
    sys.exit(_worker(sys.argv[1]))
