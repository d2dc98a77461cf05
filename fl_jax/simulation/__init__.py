"""Federated simulation: the pure round function, the driver, checkpoints."""
from fl_jax.simulation.round import Attack
from fl_jax.simulation.round import default_client_parallel
from fl_jax.simulation.round import init_server_state
from fl_jax.simulation.round import make_round_fn
from fl_jax.simulation.round import round_keys
from fl_jax.simulation.round import RoundMetrics
from fl_jax.simulation.round import run_clients
from fl_jax.simulation.round import sample_clients
from fl_jax.simulation.round import split_by_parameter
from fl_jax.simulation.round import ServerState
