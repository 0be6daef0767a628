"""Speed tools: the benchmark suite behind `python -m xray_jax.benchmark` (`suite`), FLOPs
counted on a traced step (`model_flops`), a profiler trace summed per HLO instruction
(`step_profile`), and the process settings that the binaries may opt into (`xla_flags`,
`huge_pages`)."""
