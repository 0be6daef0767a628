"""Learning-rate schedules and optax optimizers from `config.optimizer`."""

import math

import jax
import ml_collections
import optax

from xray_jax import errors, models


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


def _head_or_backbone(params):
  """"head" for the leaves of the model's last dense layer, "backbone" for the others."""
  head = models.head_name(params)
  return {name: jax.tree.map(lambda _, n=name: "head" if n == head else "backbone", subtree)
          for name, subtree in params.items()}


def _with_backbone_rate(finetune: ml_collections.ConfigDict | None,
                        optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """`optimizer` for the head and, for the backbone, the same with its updates scaled by
  `finetune.backbone_learning_rate_scale`, or no updates when `finetune.freeze_backbone`."""
  if finetune is None or (not finetune.freeze_backbone
                          and finetune.backbone_learning_rate_scale == 1.0):
    return optimizer
  backbone = (optax.set_to_zero() if finetune.freeze_backbone
              else optax.chain(optimizer, optax.scale(finetune.backbone_learning_rate_scale)))
  return optax.multi_transform({"head": optimizer, "backbone": backbone}, _head_or_backbone)


def create_optimizer(
    opt_config: ml_collections.ConfigDict, schedule: optax.Schedule,
    finetune: ml_collections.ConfigDict | None = None,
) -> optax.GradientTransformation:
  """adam, adamw or sgd with momentum, behind optional global-norm clipping; with
  `finetune` (config.finetune), its backbone frozen or at a lower learning rate."""
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
  optimizer = _with_backbone_rate(finetune, optimizer)
  if opt_config.grad_clip_norm > 0:
    optimizer = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), optimizer)
  return optimizer
