"""Scoring judges: metrics with intervals, robustness, reports, plots, API baselines.

``python -m jdjudge.evaluate`` (``jdjudge/evaluate.py``) wires these pure pieces together;
docs/evaluation.md describes every metric and file.
"""
