"""Learning-rate schedules and optax optimizers from `config.optimizer`."""

import math

import jax
import ml_collections
import optax

from xray_jax import errors


def schedule_length(
    training: ml_collections.ConfigDict, num_train_examples: int) -> tuple[int, int]:
  """(steps per epoch, total steps) of a run over `num_train_examples` images."""
  steps_per_epoch = num_train_examples // training.global_batch_size
  if steps_per_epoch == 0:
    raise errors.ConfigError(
        f"config.training.global_batch_size={training.global_batch_size} is larger than the "
        f"{num_train_examples} training images")
  total_steps = (training.num_train_steps if training.num_train_steps > 0
                 else math.ceil(training.num_epochs * steps_per_epoch))
  return steps_per_epoch, total_steps


def create_learning_rate_schedule(
    opt_config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
  """Linear warmup to the peak rate, then constant or cosine decay to 0 at `total_steps`."""
  warmup_steps = min(int(opt_config.warmup_epochs * steps_per_epoch), total_steps - 1)
  peak = opt_config.learning_rate
  if opt_config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps=warmup_steps, decay_steps=total_steps)
  if opt_config.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup_steps, 1)), optax.constant_schedule(peak)],
        [warmup_steps])
  raise errors.ConfigError(
      f"config.optimizer.schedule={opt_config.schedule!r}; expected cosine or constant")


def _decay_mask(params):
  """Weight decay applies to kernels, not to biases or normalization scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(
    opt_config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
  """adam, adamw or sgd with momentum, behind optional global-norm clipping."""
  name, decay = opt_config.name, opt_config.weight_decay
  if name == "adamw":
    optimizer = optax.adamw(schedule, weight_decay=decay, mask=_decay_mask)
  elif name == "adam":
    optimizer = optax.chain(optax.add_decayed_weights(decay, _decay_mask), optax.adam(schedule))
  elif name == "sgd":
    optimizer = optax.chain(
        optax.add_decayed_weights(decay, _decay_mask),
        optax.sgd(schedule, momentum=opt_config.momentum, nesterov=opt_config.nesterov))
  else:
    raise errors.ConfigError(
        f"config.optimizer.name={name!r}; expected adam, adamw or sgd")
  if opt_config.grad_clip_norm > 0:
    optimizer = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), optimizer)
  return optimizer
