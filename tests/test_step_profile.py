"""The step profile: HLO text parsed into instruction kinds, and a real profiler trace's time
attributed to the instructions that spent it."""

import re

import jax
import jax.numpy as jnp
import pytest

from xray_jax.speed import step_profile

HLO = """HloModule jit_step, is_scheduled=true, entry_computation_layout={(f32[4]{0})->f32[4]{0}}

%fused_computation (param_0: f32[4]) -> f32[4] {
  %param_0 = f32[4]{0} parameter(0)
  ROOT %sine.1 = f32[4]{0} sine(%param_0)
}

ENTRY %main.2 (x.1: f32[4]) -> f32[4] {
  %x.1 = f32[4]{0} parameter(0), metadata={op_name="x"}
  %sine_fusion.3 = f32[4]{0} fusion(%x.1), kind=kLoop, calls=%fused_computation
  %custom-call.4 = (f32[4]{0}, s32[]) custom-call(%sine_fusion.3), custom_call_target="cb"
  %get-tuple-element.5 = f32[4]{0} get-tuple-element(%custom-call.4), index=0
  ROOT %convolution.6 = f32[1,4,4,1]{3,2,1,0} convolution(%get-tuple-element.5, %x.1)
}
"""


def test_hlo_kinds_reads_opcodes_custom_call_targets_and_fusion_names():
  module, kinds = step_profile.hlo_kinds(HLO)
  assert module == "jit_step"
  assert kinds["sine_fusion.3"] == "fusion:sine_fusion"
  assert kinds["custom-call.4"] == "custom-call:cb"
  assert kinds["get-tuple-element.5"] == "get-tuple-element"
  assert kinds["convolution.6"] == "convolution"
  assert kinds["sine.1"] == "sine" and kinds["param_0"] == "parameter"


def test_hlo_kinds_rejects_other_text():
  with pytest.raises(ValueError, match="HloModule"):
    step_profile.hlo_kinds("not a module")


def test_seconds_by_kind_sums_kinds_and_the_rest():
  ops = [step_profile.OpTime("a.1", "fusion:a", 3.0), step_profile.OpTime("b", "dot", 2.0),
         step_profile.OpTime("a.2", "fusion:a", 1.0), step_profile.OpTime("c", "copy", 0.5),
         step_profile.OpTime("d", "sort", 0.25)]
  assert step_profile.seconds_by_kind(ops) == {"fusion:a": 4.0, "dot": 2.0, "copy": 0.5,
                                               "sort": 0.25}
  assert step_profile.seconds_by_kind(ops, top=2) == {"fusion:a": 4.0, "dot": 2.0,
                                                      "others": 0.75}


def _instruction_line(hlo_text: str, name: str) -> str:
  return re.search(rf"^\s*(?:ROOT\s+)?%?{re.escape(name)} = .*$", hlo_text, re.MULTILINE)[0]


def test_profile_gives_the_large_computation_its_time(tmp_path):
  def two_sizes(big, small):
    return jnp.sin(big) * jnp.cos(big), jnp.sin(small) * jnp.cos(small)

  step = jax.jit(two_sizes)
  big, small = jnp.linspace(0, 1, 2**22), jnp.linspace(0, 1, 2**8)
  compiled = step.lower(big, small).compile()
  ops = step_profile.profile(lambda: compiled(big, small), compiled.as_text(), 3, tmp_path)

  assert list(tmp_path.rglob("*.xplane.pb"))  # The trace stays for a viewer.
  assert ops == sorted(ops, key=lambda op: op.seconds, reverse=True)
  assert all(op.kind != "other" for op in ops)
  costliest = _instruction_line(compiled.as_text(), ops[0].name)
  assert "[4194304]" in costliest
  small_ops = [op for op in ops if "[256]" in _instruction_line(compiled.as_text(), op.name)]
  assert small_ops and ops[0].seconds > 20 * max(op.seconds for op in small_ops)


def test_profile_of_a_run_without_the_module_is_an_error(tmp_path):
  def add_one(x):
    return x + 1

  def double(x):
    return x * 2

  profiled = jax.jit(add_one).lower(jnp.ones(4)).compile()
  other = jax.jit(double)
  with pytest.raises(RuntimeError, match="no events of HLO module jit_add_one"):
    step_profile.profile(lambda: other(jnp.ones(4)), profiled.as_text(), 2, tmp_path)
