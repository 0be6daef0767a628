"""Model FLOPs of a JAX function: its matmuls and convolutions, counted on the traced program.

MFU divides these by a chip's matrix peak. Counting the jaxpr gives the same number on every
platform; XLA's own cost analysis does not, since on GPU it leaves out the convolutions that
it hands to cuDNN. Elementwise work is not counted: it does not run on the matrix units.
"""

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax


def _tap_pairs(in_size: int, out_size: int, kernel: int, stride: int, padding: tuple[int, int],
               lhs_dilation: int, rhs_dilation: int) -> int:
  """Pairs (output position, kernel tap) of one spatial dimension whose tap lands on an input
  element: not on padding, nor between the elements that an input dilation spreads out
  (transposed convolutions, as in the gradients of strided ones)."""
  span = (in_size - 1) * lhs_dilation
  return sum(1 for o in range(out_size) for k in range(kernel)
             if 0 <= (i := o * stride + k * rhs_dilation - padding[0]) <= span
             and i % lhs_dilation == 0)


def _conv_flops(eqn) -> float:
  """2 x multiply-adds that meet an input element: per output feature and batch element,
  the input channels of its group times the (output position, kernel tap) pairs."""
  params = eqn.params
  lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
  lhs, kernel = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  pairs = math.prod(
      _tap_pairs(lhs[lhs_spec[d]], out[out_spec[d]], kernel[rhs_spec[d]],
                 params["window_strides"][d - 2], params["padding"][d - 2],
                 params["lhs_dilation"][d - 2], params["rhs_dilation"][d - 2])
      for d in range(2, len(out)))
  return 2.0 * out[out_spec[0]] * out[out_spec[1]] * kernel[rhs_spec[1]] * pairs


def _dot_flops(eqn) -> float:
  """2 x every lhs element x the rhs's free (neither contracted nor batch) size."""
  (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
  rhs = eqn.invars[1].aval.shape
  free = math.prod(d for i, d in enumerate(rhs) if i not in (*rhs_contract, *rhs_batch))
  return 2.0 * math.prod(eqn.invars[0].aval.shape) * free


def _sub_jaxprs(params: dict[str, Any]) -> Iterable[Any]:
  for value in params.values():
    for item in value if isinstance(value, tuple | list) else (value,):
      inner = getattr(item, "jaxpr", item)  # A ClosedJaxpr's Jaxpr, or a Jaxpr.
      if hasattr(inner, "eqns"):
        yield inner


def jaxpr_flops(jaxpr) -> float:
  """Matmul and convolution FLOPs of a Jaxpr, through nested calls; a scan's body counts once
  per iteration, a conditional's costliest branch once, a while loop's body once."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "dot_general":
      total += _dot_flops(eqn)
    else:
      inner = [jaxpr_flops(sub) for sub in _sub_jaxprs(eqn.params)]
      if name == "cond":
        total += max(inner, default=0.0)
      else:
        total += sum(inner) * (eqn.params["length"] if name == "scan" else 1)
  return total


def model_flops(fn: Callable[..., Any], *args: Any) -> float:
  """Matmul and convolution FLOPs of one call of `fn(*args)` (traced, not run)."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
