"""Serving: the SavedModel a run exports (JPEG bytes in, per-head probabilities and labels out), built from the
input ops, the model and the decision thresholds only, so that training can export at its end.

    python -m trainer.export --job_dir out/run
"""
