"""2-D convolution for `nn.Conv` whose filter gradient is a matmul over image patches.

XLA:CPU computes many convolution filter gradients at a fraction of its matmul speed. The
`patches` implementation keeps XLA's forward pass and input gradient and computes the filter
gradient as one matmul per chunk of images between their patches (im2col) and the output
gradient. It does so for the layers where that measured faster, one layer at a time, on a
2-core AVX-512 CPU: those that change the channel count (the 1-channel stems, the CNN's blocks,
ResNet downsampling); XLA's own filter gradient was as fast or faster for ResNet's
width-preserving 3x3 layers. `auto` uses `patches` when the default backend is the CPU; GPU and
TPU keep XLA's kernels.
"""

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ("auto", "xla", "patches")
NHWC = ("NHWC", "HWIO", "NHWC")  # What nn.Conv passes for 2-D images.
PATCH_CHUNK_BYTES = 4 * 2**20  # Patches per filter-gradient matmul: small chunks stay in cache.

Pairs = tuple[tuple[int, int], ...]


def _xla_conv(x: jax.Array, w: jax.Array, strides: tuple[int, ...], pads: Pairs) -> jax.Array:
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC)


def image_patches(x: jax.Array, kernel: tuple[int, int], strides: tuple[int, ...],
                  out_hw: tuple[int, int]) -> jax.Array:
  """[N, Ho, Wo, kh * kw * C] patches of an already padded NHWC `x`, in HWIO kernel order."""
  n, _, _, c = x.shape
  taps = [
      lax.slice(x, (0, i, j, 0),
                (n, i + (out_hw[0] - 1) * strides[0] + 1, j + (out_hw[1] - 1) * strides[1] + 1, c),
                (1, *strides, 1))
      for i in range(kernel[0]) for j in range(kernel[1])]
  return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def chunk_size(batch: int, bytes_per_image: int) -> int:
  """The largest divisor of `batch` whose images' patches fit in PATCH_CHUNK_BYTES (>= 1)."""
  fitting = [d for d in range(1, batch + 1)
             if batch % d == 0 and d * bytes_per_image <= PATCH_CHUNK_BYTES]
  return max(fitting, default=1)


def filter_gradient(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...],
                    strides: tuple[int, ...], pads: Pairs) -> jax.Array:
  """d(loss)/d(kernel) of an NHWC convolution: patches^T @ dy, summed over image chunks."""
  kh, kw, cin, cout = kernel_shape
  n, ho, wo, _ = dy.shape
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  chunk = chunk_size(n, ho * wo * kh * kw * cin * x.dtype.itemsize)

  def add_chunk(total, chunk_arrays):
    x_chunk, dy_chunk = chunk_arrays
    patches = image_patches(x_chunk, (kh, kw), strides, (ho, wo))
    return total + lax.dot_general(patches, dy_chunk, (((0, 1, 2), (0, 1, 2)), ((), ())),
                                   preferred_element_type=jnp.float32), None

  chunks = (x.reshape(n // chunk, chunk, *x.shape[1:]),
            dy.reshape(n // chunk, chunk, *dy.shape[1:]))
  total, _ = lax.scan(add_chunk, jnp.zeros((kh * kw * cin, cout), jnp.float32), chunks)
  return total.reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def patches_conv(x: jax.Array, w: jax.Array, strides: tuple[int, ...], pads: Pairs) -> jax.Array:
  """XLA's NHWC convolution, differentiated with `filter_gradient` for the kernel."""
  return _xla_conv(x, w, strides, pads)


def _patches_conv_fwd(x, w, strides, pads):
  return _xla_conv(x, w, strides, pads), (x, w)


def _patches_conv_bwd(strides, pads, residuals, dy):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x: _xla_conv(x, w, strides, pads), x)
  (dx,) = input_vjp(dy)
  return dx, filter_gradient(x, dy, w.shape, strides, pads).astype(w.dtype)


patches_conv.defvjp(_patches_conv_fwd, _patches_conv_bwd)


def _is_unit(dilation: Sequence[int] | None) -> bool:
  return dilation is None or all(d == 1 for d in dilation)


def patches_conv_general_dilated(
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: str | Sequence,
    lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None, feature_group_count: int = 1, precision=None, **kwargs,
) -> jax.Array:
  """`lax.conv_general_dilated` as nn.Conv calls it, with `patches_conv` for plain 2-D
  convolutions (NHWC, no dilation or groups, default precision) that change the channel count;
  XLA's for the rest."""
  plain = (lhs.ndim == 4 and tuple(dimension_numbers or ()) == NHWC and _is_unit(lhs_dilation)
           and _is_unit(rhs_dilation) and feature_group_count == 1 and precision is None
           and not kwargs)
  if not plain or rhs.shape[2] == rhs.shape[3]:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, precision=precision, **kwargs)
  strides = tuple(window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  return patches_conv(lhs, rhs, strides, tuple(tuple(p) for p in padding))


def conv_general_dilated(impl: str) -> Callable[..., jax.Array] | None:
  """The function `nn.Conv(conv_general_dilated=...)` should use for `impl` (None: XLA's)."""
  if impl not in IMPLS:
    raise ValueError(f"conv_impl={impl!r}; expected one of {', '.join(IMPLS)}")
  if impl == "patches" or (impl == "auto" and jax.default_backend() == "cpu"):
    return patches_conv_general_dilated
  return None
