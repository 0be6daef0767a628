r"""Self-supervised pretraining of a backbone on the training images without their labels
(`xray_jax.pretraining`), for fine-tuning with `--config.finetune.init_from=WORKDIR`.

  python -m xray_jax.pretrain --config=configs/pretrain_cpu.py --workdir=/tmp/xray/ssl \
      --config.data.dir=/path/to/chest_xray

Same flags as `xray_jax.main`, whose flag handling it shares; running it again resumes.
"""

from absl import app

from xray_jax import cli, pretraining
from xray_jax import main as main_lib


def main(argv: list[str]) -> None:
  main_lib.run_job(argv, pretraining.pretrain)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
