r"""Time to accuracy of a training run, from its metrics.jsonl: the first evaluation at which
validation ROC AUC reached a target, the seconds from the start to it (data loading and
compilation included), images/s over the whole run and the peak device memory.

  python benchmarks/time_to_accuracy.py /tmp/xray/r50 --target=0.99
"""

import argparse
import json
import pathlib


def time_to_accuracy(workdir: pathlib.Path, metric: str, target: float) -> dict:
  """The run's figures (see the module docstring); time and step are None if the target was
  never reached."""
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file (is {workdir} a training run's workdir?)")
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  train = {r["step"]: r for r in records if "train/elapsed_seconds" in r}
  if not train:
    raise ValueError(f"{path} has no train/elapsed_seconds: written by an older xray_jax")
  evaluations = [r for r in records if metric in r]
  reached = next((r for r in evaluations if r[metric] >= target), None)
  last_step = max(train)
  config = json.loads((workdir / "config.json").read_text())
  batch = config["training"]["global_batch_size"]
  peaks = [r["train/peak_device_memory_mib"] for r in train.values()
           if "train/peak_device_memory_mib" in r]
  return {
      "metric": metric, "target": target,
      "reached_at_step": None if reached is None else reached["step"],
      "reached_at_epoch": None if reached is None else train[reached["step"]]["train/epoch"],
      "seconds_to_target": (None if reached is None
                            else train[reached["step"]]["train/elapsed_seconds"]),
      "best": max((r[metric] for r in evaluations), default=None),
      "steps": last_step, "seconds": train[last_step]["train/elapsed_seconds"],
      "images_per_s_whole_run": last_step * batch / train[last_step]["train/elapsed_seconds"],
      "peak_device_memory_mib": max(peaks, default=None),
      "evaluations": [{k: v for k, v in r.items() if k == "step" or k.endswith("/auc")
                       or (k.endswith("/accuracy") and not k.startswith("train/"))}
                      for r in evaluations],
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir", type=pathlib.Path)
  parser.add_argument("--metric", default="val/auc")
  parser.add_argument("--target", type=float, default=0.99)
  args = parser.parse_args()
  print(json.dumps(time_to_accuracy(args.workdir, args.metric, args.target), indent=2))


if __name__ == "__main__":
  main()
