"""Evaluation metrics (accuracy, PGD, AP ratio, selections) and the writer."""
from fl_jax.metrics.evaluation import accuracy
from fl_jax.metrics.evaluation import ap_ratio
from fl_jax.metrics.evaluation import per_client_accuracy
from fl_jax.metrics.evaluation import pgd_accuracy
from fl_jax.metrics.evaluation import pgd_accuracy_at
from fl_jax.metrics.evaluation import selection_counts
from fl_jax.metrics.tensorboard import read_scalars
from fl_jax.metrics.tensorboard import TensorBoardWriter
from fl_jax.metrics.writer import JsonlWriter
from fl_jax.metrics.writer import read_jsonl
from fl_jax.metrics.writer import to_jsonable
