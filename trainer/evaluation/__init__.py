"""Evaluation: the model under evaluation (eval_model.py), its metrics (eval_metrics.py), the HTML pages (pages.py,
templates/) and the report's figures, and the label audit's issues and page. The commands that use them are
trainer.evaluate, trainer.report and trainer.label_audit.
"""
