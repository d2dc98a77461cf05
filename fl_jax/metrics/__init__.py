"""Evaluation metrics: clean / PGD accuracy, per-client accuracy, AP ratio."""
from fl_jax.metrics.evaluation import accuracy
from fl_jax.metrics.evaluation import ap_ratio
from fl_jax.metrics.evaluation import per_client_accuracy
from fl_jax.metrics.evaluation import pgd_accuracy
from fl_jax.metrics.evaluation import selection_counts
