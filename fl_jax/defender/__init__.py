"""The certified defender: held-out checks and the accept / skip rule."""
from fl_jax.defender.measure import DefenderData
from fl_jax.defender.measure import make_measure
from fl_jax.defender.measure import metric_names
from fl_jax.defender.report import evaluate_model
from fl_jax.defender.report import markdown_table
from fl_jax.defender.rule import decide
from fl_jax.defender.rule import Defender
from fl_jax.defender.rule import DefenderState
from fl_jax.defender.rule import make_defender
