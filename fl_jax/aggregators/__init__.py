"""Robust aggregation rules as composable stages on stacked client updates."""
from fl_jax.aggregators.base import Aggregator
from fl_jax.aggregators.base import aggregate
from fl_jax.aggregators.base import chain
from fl_jax.aggregators.base import EmptyState
from fl_jax.aggregators.base import sanitize
from fl_jax.aggregators.base import weighted_mean
