r"""The PyTorch side of `python -m xray_jax.benchmark --compare_torch`: the same models as
xray_jax (the CNN, ResNet-18 and ResNet-50 with a one-channel stem), trained on a random
batch with AdamW and cross-entropy, timed step by step.

  python benchmarks/torch_reference.py speed --model resnet50 --size 224 --batch 256 \
      --steps 30 --device cuda --fast

`--fast` is what a PyTorch user turns on for speed on a GPU: channels-last memory format,
bfloat16 autocast, `torch.compile`, cuDNN's benchmark mode and the fused AdamW. Prints one
line, RESULT {json}, with train_img_per_s among its fields. Needs torch alone (not part of
the package; `pip install -e '.[bench]'` installs it).
"""

import argparse
import contextlib
import json
import time

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, zero_gamma: bool = False):
  """A bias-free convolution ('same' padding for odd kernels) and its BatchNorm."""
  norm = nn.BatchNorm2d(cout, momentum=0.1)  # PyTorch's 0.1 is flax's momentum 0.9.
  if zero_gamma:
    nn.init.zeros_(norm.weight)
  return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), norm)


class ClassicCNN(nn.Module):
  """xray_jax's `cnn`: [conv 3x3, BN, ReLU, 2x2 max-pool] x 4 (32-64-128-256), global
  average pooling, dropout 0.3, dense 256, ReLU, dropout 0.3, dense."""

  def __init__(self, num_classes: int, widths=(32, 64, 128, 256), dense: int = 256):
    super().__init__()
    blocks, cin = [], 1
    for width in widths:
      blocks += [conv_bn(cin, width, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
      cin = width
    self.features = nn.Sequential(*blocks)
    self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(cin, dense), nn.ReLU(inplace=True),
                              nn.Dropout(0.3), nn.Linear(dense, num_classes))

  def forward(self, x):
    return self.head(self.features(x).mean(dim=(2, 3)))


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin: int, width: int, stride: int):
    super().__init__()
    self.body = nn.Sequential(conv_bn(cin, width, 3, stride), nn.ReLU(inplace=True),
                              conv_bn(width, width, 3, zero_gamma=True))
    self.shortcut = (nn.Identity() if stride == 1 and cin == width
                     else conv_bn(cin, width, 1, stride))

  def forward(self, x):
    return F.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin: int, width: int, stride: int):
    super().__init__()
    out = width * 4
    self.body = nn.Sequential(conv_bn(cin, width, 1), nn.ReLU(inplace=True),
                              conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
                              conv_bn(width, out, 1, zero_gamma=True))
    self.shortcut = (nn.Identity() if stride == 1 and cin == out
                     else conv_bn(cin, out, 1, stride))

  def forward(self, x):
    return F.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
  """ResNet v1.5 as xray_jax's: 7x7 stride-2 stem on one channel, 3x3 max-pool, four
  stages (the stride in each first block's 3x3 convolution), last BN of a block zero."""

  def __init__(self, num_classes: int, block, stage_sizes, width: int = 64):
    super().__init__()
    layers = [conv_bn(1, width, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = width
    for stage, blocks in enumerate(stage_sizes):
      for index in range(blocks):
        stride = 2 if stage > 0 and index == 0 else 1
        layers.append(block(cin, width * 2**stage, stride))
        cin = width * 2**stage * block.expansion
    self.features = nn.Sequential(*layers)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.fc(self.features(x).mean(dim=(2, 3)))


MODELS = {
    "cnn": ClassicCNN,
    "resnet18": lambda n: ResNet(n, BasicBlock, (2, 2, 2, 2)),
    "resnet50": lambda n: ResNet(n, Bottleneck, (3, 4, 6, 3)),
}


def speed(args: argparse.Namespace) -> dict:
  """Train (and eval) images/s of `args.model` on one random batch."""
  device = torch.device(args.device)
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  on_gpu = device.type == "cuda"
  fast = args.fast
  torch.backends.cudnn.benchmark = fast
  memory_format = torch.channels_last if fast else torch.contiguous_format
  model = MODELS[args.model](2).to(device, memory_format=memory_format)
  params = sum(p.numel() for p in model.parameters())
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4,
                                fused=(on_gpu and fast) or None)
  images = torch.randn(args.batch, 1, args.size, args.size, device=device).contiguous(
      memory_format=memory_format)
  labels = torch.randint(0, 2, (args.batch,), device=device)
  run = torch.compile(model) if fast else model
  autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if fast else (
      contextlib.nullcontext)
  sync = torch.cuda.synchronize if on_gpu else (lambda: None)

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    with autocast():
      loss = F.cross_entropy(run(images), labels)
    loss.backward()
    optimizer.step()

  def timed(step) -> float:
    start = time.perf_counter()
    step()
    sync()
    return time.perf_counter() - start

  model.train()
  first_s = [timed(train_step) for _ in range(args.warmup)]
  train_s = [timed(train_step) for _ in range(args.steps)]
  model.eval()

  def eval_step():
    with torch.no_grad(), autocast():
      run(images)
  eval_first_s = timed(eval_step)
  eval_s = [timed(eval_step) for _ in range(args.eval_steps)]
  peak = torch.cuda.max_memory_allocated(device) / 2**20 if on_gpu else None
  return dict(
      cmd="speed", model=args.model, size=args.size, batch=args.batch, device=args.device,
      device_name=torch.cuda.get_device_name(device) if on_gpu else "cpu", fast=fast,
      torch=torch.__version__, threads=torch.get_num_threads(), params=params,
      warmup_s=sum(first_s), eval_first_s=eval_first_s, steps=args.steps,
      train_img_per_s=args.batch * args.steps / sum(train_s),
      eval_img_per_s=args.batch * len(eval_s) / sum(eval_s),
      peak_device_memory_mib=peak)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest="command", required=True)
  command = commands.add_parser("speed", help="train-step images/s on a random batch")
  command.add_argument("--model", choices=sorted(MODELS), required=True)
  command.add_argument("--size", type=int, default=224)
  command.add_argument("--batch", type=int, default=32)
  command.add_argument("--steps", type=int, default=20, help="timed train steps")
  command.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
  command.add_argument("--eval_steps", type=int, default=10)
  command.add_argument("--threads", type=int, default=torch.get_num_threads())
  command.add_argument("--device", default="cpu", help="cpu or cuda")
  command.add_argument("--fast", action="store_true", help="channels-last, bfloat16 autocast, "
                       "torch.compile, cuDNN benchmark mode, fused AdamW")
  args = parser.parse_args()
  print("RESULT " + json.dumps(speed(args)), flush=True)


if __name__ == "__main__":
  main()
