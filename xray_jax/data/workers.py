"""grain worker processes, started the same way by every pipeline of the package."""

import grain

from xray_jax import interrupts


def prefetch(ds: grain.IterDataset, num_workers: int) -> grain.IterDataset:
  """`ds` produced by `num_workers` worker processes (which ignore Ctrl-C), or by this
  process when 0."""
  if num_workers == 0:
    return ds
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                        worker_init_fn=interrupts.ignore_in_worker)
