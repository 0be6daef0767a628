"""Fine-tuning: a run that starts from another run's weights (`config.finetune.init_from`).

Every parameter and BatchNorm statistic whose path and shape match the source's is loaded;
the rest (a classifier head for another number of classes) keeps its fresh initialization.
A self-supervised pretraining run (`xray_jax.pretrain`) is a source too: it holds the
backbone only (and a projector that nothing here reads), so every head starts fresh; its
training images must not include this run's validation images (`check_validation_unseen`).
Freezing the backbone or lowering its learning rate is the optimizer's part
(`optimizers.create_optimizer`).
"""

import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from xray_jax import contrastive, errors, trained
from xray_jax.data import splits as splits_lib
from xray_jax.data.splits import Splits


def _merge(fresh: Any, source: Any, prefix: str, loaded: list[str], skipped: list[str]) -> Any:
  """`fresh` with every leaf that `source` has at the same path and shape replaced."""
  def pick(path, leaf):
    name = prefix + "/".join(str(getattr(k, "key", k)) for k in path)
    found = source
    for key in path:
      found = found.get(getattr(key, "key", key)) if isinstance(found, dict) else None
    if found is not None and np.shape(found) == leaf.shape:
      loaded.append(name)
      return jax.device_put(np.asarray(found, leaf.dtype), leaf.sharding)
    skipped.append(f"{name} {leaf.shape}" + ("" if found is None
                                               else f" (source {np.shape(found)})"))
    return leaf
  return jax.tree_util.tree_map_with_path(pick, fresh)


def check_validation_unseen(init_from: str, data_config: ml_collections.ConfigDict,
                            splits: Splits) -> None:
  """Raises ConfigError when `init_from` is a pretraining run on the same images that did
  not hold out all of the validation split carved now (other data.val_fraction, split_seed
  or group_pattern): its training images include some of this run's validation images."""
  workdir, _ = trained.parse_run(init_from)
  held_out = splits_lib.saved_validation(workdir)
  if splits.new_split is None or held_out is None:
    return  # Validation is the source's own val split, or not carved by the source.
  source = trained.load_config(pathlib.Path(workdir))
  if not contrastive.is_pretraining(source) or source.data.dir != data_config.dir:
    return
  seen = sorted(set(splits.new_split["val"]) - set(held_out))
  if seen:
    raise errors.ConfigError(
        f"config.finetune.init_from={init_from!r} pretrained on {len(seen)} of this run's "
        f"validation images (e.g. {seen[0]}): carve validation as it did (its "
        "data.val_fraction, data.split_seed and data.group_pattern)")


def load_source(state: Any, init_from: str, mesh: jax.sharding.Mesh) -> Any:
  """`state` with the matching parameters and statistics of the run `init_from` names (its
  moving average, if it kept one); logs what was loaded and what was not."""
  workdir, checkpoint = trained.parse_run(init_from)
  try:
    step, variables = trained.load_variables(workdir, checkpoint, mesh)
  except errors.XrayError as e:
    raise errors.ConfigError(f"config.finetune.init_from={init_from!r}: {e}") from e
  variables = jax.device_get(variables)
  loaded, skipped = [], []
  params = _merge(state.params, variables["params"], "params/", loaded, skipped)
  batch_stats = _merge(state.batch_stats, variables.get("batch_stats", {}), "batch_stats/",
                       loaded, skipped)
  if not loaded:
    raise errors.ConfigError(f"config.finetune.init_from={init_from!r}: no parameter of "
                             f"{workdir} (step {step}) fits this model")
  logging.info("Initialized from %s, step %d: %d arrays loaded; %d kept fresh: %s",
               workdir, step, len(loaded), len(skipped),
               ", ".join(skipped) or "none")
  state = state.replace(params=params, batch_stats=batch_stats)
  if state.ema:
    state = state.replace(ema={"params": params, "batch_stats": batch_stats})
  return state
