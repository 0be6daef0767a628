"""Evaluation of trained runs, apart from the trainer.

`metrics` (the figures of a set of predictions) and `tta` (test-time views) also serve the
trainer's in-loop validation; the rest serves the checkpoint-evaluation job
(`python -m xray_jax.evaluate`) and the classifier API: `evaluation` (reports, operating
point, `--watch`), `stress` (acquisition-shift stress test), `calibration` (temperature
scaling), `plots` (figures) and `gradcam` (saliency maps). The trainer never imports
`evaluation` or `plots`.
"""
