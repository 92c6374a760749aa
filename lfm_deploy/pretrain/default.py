"""The synthetic-data default weights: built once per user, cached, and what every command uses
without `--checkpoint`.

The seeded untrained default predicts background everywhere, so a newcomer following the quick
start saw empty masks and mIoU 0.00 and could not tell whether anything worked. The
synthetic-data default is the same seeded backbone with its HSNet learner and the backbone's
last stage (layer4, the stage the masker filters) trained on the synthetic shapes
`lfm-make-data` draws (`DEFAULT_RECIPE`): on that data its masks, mIoU and
fine-tuning show the pipeline working. It is still not a real model and is labelled so
everywhere (`WeightsInfo.untrained` stays true, `source` is "synthetic-default").

The learner file (~70 MB, float32: the learner's 2.6 M and layer4's 15 M parameters; too large
to ship in git) is trained on the first use and
kept in the user's cache, `$LFM_DEPLOY_CACHE`, else `$XDG_CACHE_HOME/lfm-deploy`, else
`~/.cache/lfm-deploy`, named by the recipe's version and a hash of the recipe and seed, so a
changed recipe builds anew and never reuses stale weights. It is written atomically under an
OS lock: a second process that wants it meanwhile waits for the first and then reads its file.
A cached file that cannot be read safely (tensors only) or does not fit is rebuilt.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

from ..errors import CheckpointError
from ..models.checkpoints import DEFAULT_SEED, build_model, load_learner
from ..models.hsnet import LFMHSNet
from ..utils.locks import Busy, Foreign, OutputLock, describe_holder
from ..utils.outputs import atomic_write_bytes
from .recipe import Recipe, train_learner

log = logging.getLogger(__name__)

__all__ = ["CACHE_ENV", "DEFAULT_RECIPE", "UNTRAINED", "WEIGHTS_ENV", "build_default_model", "cache_dir",
           "checkpoint_file", "default_learner", "learner_path", "recipe_of"]

#: The environment variable naming the cache folder.
CACHE_ENV = "LFM_DEPLOY_CACHE"
#: The environment variable choosing the default with no checkpoint: "synthetic" (the default) or "untrained".
WEIGHTS_ENV = "LFM_DEPLOY_DEFAULT_WEIGHTS"
#: The checkpoint value (`--checkpoint untrained`, `checkpoint="untrained"`) that asks for the seeded untrained default.
UNTRAINED = "untrained"
#: The recipe of the synthetic-data default (see `Recipe`; measured in README "Default weights"):
#: float32, because float64 training took ~70 minutes on a loaded 2-core CPU against ~2 for
#: float32, so the weights depend on the CPU family (they are built and cached per machine, and
#: `lfm-verify` says when a rebuilt default differs from the exported one).
#: The rate decays (cosine): at a constant rate the last steps left the weights wherever a few
#: episodes pushed them, and the same recipe that segmented on an AMD EPYC left an Intel Xeon's
#: masks empty on 3 of 12 validation episodes at 160 px (README "Default weights").
#: The decision offset is calibrated at the deepglobe domain's 400 px (`calibrate`): without it,
#: where the foreground began at 400 px depended on the CPU family, and one AMD EPYC's build
#: marked 81 to 85% of every tile foreground.
DEFAULT_RECIPE = Recipe(train_size=160, iterations=200, lr=1e-3, dtype="float32", render_sizes=(160, 440), threads=1,
                        min_detail=0.2, train_layer4=True, schedule="cosine", calibrate_size=400)
_WAIT_S = 0.5


def checkpoint_file(checkpoint: str | os.PathLike | None) -> str | os.PathLike | None:
    """The file a `checkpoint=` argument names: None for the defaults (None, "untrained")."""
    return None if checkpoint is None or checkpoint == UNTRAINED else checkpoint


def cache_dir() -> Path:
    """Where the built default weights are kept: `$LFM_DEPLOY_CACHE`, else
    `$XDG_CACHE_HOME/lfm-deploy`, else `~/.cache/lfm-deploy`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lfm-deploy"


def learner_path(recipe: Recipe = DEFAULT_RECIPE, seed: int = DEFAULT_SEED, cache: str | os.PathLike | None = None) -> Path:
    """The cache file of `recipe`'s learner for `seed` (which may not exist yet)."""
    folder = Path(cache) if cache is not None else cache_dir()
    return folder / f"synthetic-default-v{recipe.version}-seed{int(seed)}-{recipe.digest(seed)}.pt"


def recipe_of(weights: dict | None) -> Recipe:
    """The `Recipe` recorded in a manifest's or report's weights (`WeightsInfo.recipe`)."""
    data = dict((weights or {}).get("recipe") or {})
    if not data:
        return DEFAULT_RECIPE
    if data.get("render_sizes") is not None:
        data["render_sizes"] = tuple(data["render_sizes"])
    try:
        return Recipe(**data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the recorded synthetic-default recipe {data} is not one this lfm-deploy knows ({exc})",
                              api_hint="export again with this lfm-deploy", cli_hint="run lfm-export again with this lfm-deploy") from None


def _usable(path: Path) -> bool:
    """Whether `path` holds a learner that loads (read safely and validated by `load_learner`)."""
    if not path.is_file():
        return False
    try:
        load_learner(LFMHSNet(apm=None, acpa=False, image_size=64), path)
    except CheckpointError as exc:
        log.warning("the cached default weights %s are unusable (%s); building them again", path, exc)
        return False
    return True


class _Bar:
    """A tqdm bar over the training steps, or one log line every 20 steps without tqdm."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="building the synthetic-data default", unit="step", leave=False)
            except ImportError:  # pragma: no cover - tqdm comes with the base install
                self.bar = None

    def __call__(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}")
        elif step % 20 == 0:
            log.info("synthetic-data default: step %d, loss %.3f", step, loss)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _build(recipe: Recipe, seed: int, path: Path, progress: bool) -> None:
    import torch

    trained = "its learner and the backbone's layer4" if recipe.train_layer4 else "its learner"
    log.warning("building the synthetic-data default weights once (%s trained on synthetic shapes, "
                "%d steps at %d px, then a decision offset calibrated; 2 to 4 minutes on 2 CPU cores); cached in %s",
                trained, recipe.iterations, recipe.train_size, path.parent)
    bar = _Bar(recipe.iterations, progress)
    try:
        state, stats = train_learner(recipe, seed=seed, progress=bar)
    finally:
        bar.close()
    buffer = io.BytesIO()
    torch.save({k: v for k, v in state.items() if k.startswith(recipe.prefixes)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    # For people reading the cache folder; nothing reads it back.
    record = {"recipe": recipe.to_dict(), "seed": seed, **stats}
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(record, indent=2) + "\n").encode())
    calibrated = ""
    if "calibration" in stats:
        c = stats["calibration"]
        calibrated = (f"; decision offset {c['offset']:+.2f}, held-out mean IoU at {c['size']} px "
                      f"{c['iou_before']:.2f} -> {c['iou_after']:.2f}")
    log.warning("built the synthetic-data default in %.0f s (loss %.3f -> %.3f%s): %s",
                stats["seconds"], stats["loss_first"], stats["loss_last"], calibrated, path)


def default_learner(recipe: Recipe | None = None, seed: int = DEFAULT_SEED, *, cache: str | os.PathLike | None = None,
                    progress: bool = True) -> Path:
    """The synthetic-data default's learner file, built (once per cache) when missing or unusable.

    Args:
        recipe: the training recipe (None: `DEFAULT_RECIPE`; tests pass a small one).
        seed: the default weights' seed.
        cache: the cache folder (default `cache_dir()`).
        progress: show a progress bar while building.

    Returns:
        The path of the learner file (`hpn_learner.*` tensors, a `torch.save` state dict).

    Raises:
        CheckpointError: the cache folder cannot be written.
    """
    recipe = recipe or DEFAULT_RECIPE
    path = learner_path(recipe, seed, cache)
    if _usable(path):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create the cache folder {path.parent} ({exc.strerror})",
                              api_hint=f"set {CACHE_ENV} to a writable folder", cli_hint=f"set {CACHE_ENV} to a writable folder") from None
    lock_path = path.with_name(f".{path.name}.lock")
    waited = False
    while True:
        try:
            lock = OutputLock.acquire(lock_path)
            break
        except Busy as exc:  # another process is building it: wait, then use its file
            if not waited:
                log.warning("waiting for %s, which is building the synthetic-data default", describe_holder(exc.info))
                waited = True
            time.sleep(_WAIT_S)
        except Foreign:
            raise CheckpointError(f"{lock_path} is in the way of the cache's lock file",
                                  api_hint="remove it or set " + CACHE_ENV, cli_hint="remove it or set " + CACHE_ENV) from None
    try:
        if not (waited and _usable(path)):
            _build(recipe, seed, path, progress)
    finally:
        lock.release()
    return path


def build_default_model(apm: str | None = "m", acpa: bool = True, masker: str | os.PathLike | None = None, *,
                        image_size: int = 400, seed: int = DEFAULT_SEED, recipe: Recipe | None = None,
                        checkpoint: str | os.PathLike | None = None, progress: bool = True, **kwargs):
    """`build_model` with the commands' defaults: what a command runs with a given `checkpoint`.

    - None: the synthetic-data default (`default_learner`, built and cached on first use), unless
      the environment variable `LFM_DEPLOY_DEFAULT_WEIGHTS` is "untrained";
    - "untrained": the seeded untrained default (background everywhere; tests and debugging);
    - a path: that checkpoint.

    Args:
        apm, acpa, masker, image_size, seed: as `build_model`.
        recipe: the synthetic default's recipe (None: `DEFAULT_RECIPE`).
        checkpoint: None, "untrained" or a checkpoint file.
        progress: show a progress bar if the default has to be built.
        **kwargs: passed on to `build_model` (e.g. `official_shift`).

    Returns:
        (model, `WeightsInfo`) as `build_model`.

    Raises:
        CheckpointError: see `build_model`; a bad `LFM_DEPLOY_DEFAULT_WEIGHTS`.
    """
    if checkpoint is not None and str(checkpoint) == UNTRAINED:
        checkpoint = None
        choice = UNTRAINED
    else:
        choice = os.environ.get(WEIGHTS_ENV, "synthetic").strip().lower() or "synthetic"
        if choice not in ("synthetic", UNTRAINED):
            raise CheckpointError(f"{WEIGHTS_ENV}={os.environ[WEIGHTS_ENV]!r} is neither 'synthetic' nor 'untrained'",
                                  api_hint=f"unset {WEIGHTS_ENV} or set it to synthetic or untrained", cli_hint=f"unset {WEIGHTS_ENV} or set it to synthetic or untrained")
    recipe = recipe or DEFAULT_RECIPE
    learner = None
    if checkpoint is None and choice == "synthetic":
        learner = default_learner(recipe, seed, progress=progress)
    return build_model(apm=apm, acpa=acpa, checkpoint=checkpoint, masker=masker, image_size=image_size, seed=seed,
                       learner=learner, recipe=recipe.to_dict() if learner is not None else None, **kwargs)
