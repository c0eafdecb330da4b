"""Evaluation of (token-merged) video classifiers: accuracy, speed, resumable results, tables and plots."""

from .datasets import AnnotationError, Sample, load_samples
from .harness import EvalConfig, EvaluationError, evaluate
from .logits import read_logits
from .report import write_report
from .results import ResultsError, compute_metrics, read_runs

__all__ = [
    "AnnotationError",
    "EvalConfig",
    "EvaluationError",
    "ResultsError",
    "Sample",
    "compute_metrics",
    "evaluate",
    "load_samples",
    "read_logits",
    "read_runs",
    "write_report",
]
