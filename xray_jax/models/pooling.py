"""Max-pooling whose gradient on the CPU is a sum of masked, strided taps.

XLA:CPU differentiates `reduce_window(max)` through a variadic reduce-window that carries
four index arrays the size of the padded input, then a scatter: slow, and memory the size of
the input several times over. Here the first tap of each window that holds its maximum (the
tie-break XLA uses) takes the output gradient, and the taps are padded back into place and
summed, all of it elementwise, which XLA fuses. Other platforms keep XLA's gradient. Timings:
docs/speed.md, "Max-pooling gradient".
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Pairs = tuple[tuple[int, int], ...]


def tap_gradient(x: jax.Array, dy: jax.Array, window: tuple[int, int],
                 strides: tuple[int, int], pads: Pairs) -> jax.Array:
  """d(loss)/dx of NHWC max-pooling of `x`, given dy: each output's gradient goes to the
  first tap of its window (row-major) that holds the maximum.

  The winning tap is found from `x` alone, never by comparing `x` with the forward's output:
  XLA may recompute `x` inside a fusion, and a recomputed value can differ in its last bit.
  """
  n, _, _, c = x.shape
  ho, wo = dy.shape[1:3]
  padded = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  height, width = padded.shape[1:3]
  span = ((ho - 1) * strides[0] + 1, (wo - 1) * strides[1] + 1)
  offsets = [(i, j) for i in range(window[0]) for j in range(window[1])]
  taps = [lax.slice(padded, (0, i, j, 0), (n, i + span[0], j + span[1], c), (1, *strides, 1))
          for i, j in offsets]
  best, winner = taps[0], jnp.zeros(dy.shape, jnp.int32)
  for index, tap in enumerate(taps[1:], start=1):
    better = tap > best
    best, winner = jnp.where(better, tap, best), jnp.where(better, index, winner)
  zero = jnp.zeros((), dy.dtype)
  dx = jnp.zeros(padded.shape, dy.dtype)
  for index, (i, j) in enumerate(offsets):
    dx = dx + lax.pad(jnp.where(winner == index, dy, zero), zero, (
        (0, 0, 0), (i, height - i - span[0], strides[0] - 1),
        (j, width - j - span[1], strides[1] - 1), (0, 0, 0)))
  (top, bottom), (left, right) = pads
  return dx[:, top:height - bottom, left:width - right, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
              pads: Pairs) -> jax.Array:
  return nn.max_pool(x, window, strides, pads)


def _max_pool_fwd(x, window, strides, pads):
  return nn.max_pool(x, window, strides, pads), x


def _max_pool_bwd(window, strides, pads, x, dy):

  def xla_gradient(x, dy):
    _, vjp = jax.vjp(lambda x: nn.max_pool(x, window, strides, pads), x)
    return vjp(dy)[0]

  def cpu_gradient(x, dy):
    return tap_gradient(x, dy, window, strides, pads)

  return (lax.platform_dependent(x, dy, cpu=cpu_gradient, default=xla_gradient),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
  """`nn.max_pool` for NHWC images, with the tap gradient on the CPU."""
  window, strides = tuple(window), tuple(strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
  return _max_pool(x, window, strides, tuple(tuple(p) for p in padding))
