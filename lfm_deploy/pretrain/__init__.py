"""The synthetic-data default weights: the HSNet learner trained on synthetic episodes, built once
per user and cached; what the commands use without `--checkpoint`."""

from .default import (CACHE_ENV, DEFAULT_RECIPE, UNTRAINED, WEIGHTS_ENV, build_default_model, cache_dir, checkpoint_file,
                      default_learner, learner_path, recipe_of)
from .recipe import Recipe, train_learner

__all__ = ["CACHE_ENV", "DEFAULT_RECIPE", "UNTRAINED", "WEIGHTS_ENV", "Recipe", "build_default_model", "cache_dir",
           "checkpoint_file", "default_learner", "learner_path", "recipe_of", "train_learner"]
