r"""Self-supervised pretraining (SimCLR) of configs/pneumonia_cpu.py's backbone.

  python -m xray_jax.pretrain --config=configs/pretrain_cpu.py --workdir=/tmp/xray/ssl \
      --config.data.dir=/path/to/chest_xray

Pretrains on the train part of the split that the supervised run carves (same data
fields), without labels; 85 minutes on 2 AVX2 cores (docs/training.md). Its
workdir feeds `finetune.init_from` of configs/finetune_cpu.py, the recipe for a new
acquisition (README, docs/results.md). Accepts the same config args as pneumonia.py
(`runlocal`, `model=`, `res=`).
"""

import ml_collections

from xray_jax import config_args

pneumonia_cpu = config_args.import_sibling(__file__, "pneumonia_cpu")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """pneumonia_cpu's data and model, with a `pretrain` section and stronger augmentation."""
  arg = config_args.parse_arg(arg, runlocal=False, model="resnet18", res=128)
  config = pneumonia_cpu.get_config(f"runlocal={arg.runlocal},model={arg.model},res={arg.res}")
  config.pretrain = ml_collections.ConfigDict()
  config.pretrain.temperature = 0.2  # NT-Xent: cosine similarities are divided by this.
  config.pretrain.projection_hidden = 0  # Hidden width of the projection MLP; 0: feature width.
  config.pretrain.projection_dim = 128  # Output width of the projection MLP.
  # Extra unlabeled images: comma-separated folders searched recursively for .png, .jpg,
  # .jpeg, .dcm; none may be a validation or test image.
  config.pretrain.extra_dirs = ""

  # Views differ by crop, pose, exposure, blur, noise and flips (MoCo-CXR used flips).
  config.data.augment.crop_area_min = 0.5  # Random resized crop of [a, 1] of the area first.
  config.data.augment.rotation_degrees = 10.0  # Uniform rotation in [-r, r] degrees.
  config.data.augment.translate_fraction = 0.1  # Shift of up to this fraction of the size.
  config.data.augment.hflip_prob = 0.5  # Mirror half the views.
  config.data.augment.brightness = 0.3  # Uniform offset in [-b, b] on the [0, 1] scale.
  config.data.augment.contrast = 0.3  # Uniform gain in [1 - c, 1 + c] around the mean.
  config.data.augment.gamma = 0.3  # Gamma exp(u), u uniform in [-g, g].
  config.data.augment.blur_sigma = 0.01  # Gaussian blur, sigma uniform in [0, s] x width.
  config.data.augment.noise_std = 0.02  # Gaussian noise, std uniform in [0, n].
  config.optimizer.weight_decay = 1e-6  # SimCLR's small decay.
  if arg.runlocal:
    return config
  config.training.global_batch_size = 64  # 128 views a step: 126 negatives for each.
  # 20 beat 8 on the external set; 40 rank 0.004 better at twice the time, over 90
  # minutes on 2 AVX2 cores (docs/results.md, The recipe for a new acquisition).
  config.training.num_epochs = 20.0
  return config
