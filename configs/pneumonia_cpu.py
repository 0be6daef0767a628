r"""configs/pneumonia.py sized for a 2-core CPU: ResNet-18 at half width, 128x128 input.

  python -m xray_jax.main --config=configs/pneumonia_cpu.py --workdir=/tmp/xray/cpu \
      --config.data.dir=/path/to/chest_xray

Trains 6 epochs, sized for 2 cores (docs/results.md has its results and time). Accepts the
same config args as pneumonia.py (`runlocal`, `model=`, `res=`).
"""

import ml_collections

from xray_jax import config_args

pneumonia = config_args.import_sibling(__file__, "pneumonia")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The base config with CPU-sized model, input, batch and schedule."""
  arg = config_args.parse_arg(arg, runlocal=False, model="resnet18", res=128)
  config = pneumonia.get_config(f"runlocal={arg.runlocal},model={arg.model},res={arg.res}")
  if arg.runlocal:
    return config
  if arg.model.startswith("resnet"):
    config.model.width = 32  # XLA:CPU filter gradients are slow: half width is 4x cheaper.
  config.data.num_workers = 0  # Decoding in threads of the main process: 2 cores only.
  config.training.global_batch_size = 32
  config.training.num_epochs = 6.0
  config.optimizer.warmup_epochs = 0.5
  config.loss.label_smoothing = 0.1  # Softer targets: better calibrated, less overfit.
  return config
