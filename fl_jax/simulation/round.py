"""One federated round as a single jitted, pure function.

``round_fn(state, data) -> (state, metrics)``:

1. keys from position: ``k_r = fold_in(key(seed), round)``; the sampling key and
   each client's training key (``fold_in(k_train, client_id)``) derive from it,
   so any round can be replayed from ``(seed, round, params)`` alone;
2. sample ``m`` of ``K`` clients without replacement and gather their padded
   data ``[m, n_max, ...]``;
3. run the pure ``client_update`` on every sampled client, either fully
   vmapped or as ``lax.map`` over chunks of clients (same maths; the chunked map
   is faster on XLA:CPU, a full vmap is what accelerators want);
4. optionally let an :class:`Attack` rewrite the stacked updates of the
   sampled malicious clients (masks inside the jitted round, no Python branch
   per client);
5. aggregate the updates ``u_i = w_i - w`` with an :class:`Aggregator`
   (FedAvg: ``w + sum_i n_i / n_S (w_i - w)``);
6. optionally let a :class:`fl_jax.defender.Defender` measure the candidate
   model on held-out data and skip the round (keep the old model) if it looks
   tampered with.

The client axis is the leading axis of every stacked array; with
``client_sharding`` the sampled clients are split over devices along it.
"""
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from fl_jax import aggregators as agg_lib
from fl_jax import tree_math
from fl_jax.client import ClientBatch
from fl_jax.types import Array, Params, PRNGKey

CLIENT_PARALLEL = ('vmap', 'map')
AGGREGATE_LAYOUTS = ('params', 'clients')


class ServerState(NamedTuple):
  """Everything a round needs besides the data.

  Attributes:
    params: global model parameters.
    round: int32 scalar, index of the next round to run.
    agg_state: the aggregator's state (e.g. a DP noise key).
    defender_state: the defender's reference metrics (``()`` without one).
  """
  params: Params
  round: Array
  agg_state: Any
  defender_state: Any = ()


class Attack(NamedTuple):
  """Malicious behaviour plugged into the round (see ``fl_jax.attacks``).

  Attributes:
    sample: ``None`` (uniform sampling) or ``sample(key, round) -> ids[m]``,
      e.g. to force an attacker into every F-th round.
    apply: ``apply(global_params, updates[m, ...], weights[m], client_ids[m],
      key, round, attack_data) -> (updates, weights, info)``: rewrites the rows
      of the sampled malicious clients; ``info`` is a dict of arrays.
  """
  sample: Optional[Callable]
  apply: Callable


class RoundMetrics(NamedTuple):
  """Per-round outputs; ``[m]``-shaped fields are per sampled client."""
  client_ids: Array        # [m] int32
  train_loss: Array        # [m]
  num_examples: Array      # [m]
  update_norms: Array      # [m] l2 norm of w_i - w
  aggregate_norm: Array    # scalar l2 norm of the applied update
  diagnostics: dict        # the aggregator's diagnostics
  attack: dict             # the attack's info (empty without an attack)
  defender: dict           # the defender's metrics and verdicts (empty without one)


def default_client_parallel() -> str:
  return 'map' if jax.default_backend() == 'cpu' else 'vmap'


def init_server_state(params: Params, aggregator: agg_lib.Aggregator,
                      start_round: int = 0, defender_state: Any = ()) -> ServerState:
  return ServerState(params, jnp.asarray(start_round, jnp.int32),
                     aggregator.init(params), defender_state)


def round_keys(seed_key: PRNGKey, round_idx):
  """``(sample_key, train_key, attack_key, defender_key)`` of a round."""
  k = jax.random.fold_in(seed_key, round_idx)
  return tuple(jax.random.split(k, 4))


def sample_clients(key: PRNGKey, num_clients: int, clients_per_round: int) -> Array:
  """``m`` distinct client ids in ``[0, K)``, int32 ``[m]``."""
  return jax.random.choice(key, num_clients, (clients_per_round,),
                           replace=False).astype(jnp.int32)


def run_clients(client_update: Callable, params: Params, batch: ClientBatch,
                mask: Array, keys: PRNGKey, round_idx, *, client_parallel: str,
                chunk_size: Optional[int] = None):
  """Runs ``client_update`` on every client of a stacked batch.

  Args:
    client_update: the pure per-client function.
    params: global parameters (shared by all clients).
    batch: stacked client data, ``x[m, n, ...]``, ``y[m, n]``.
    mask: ``[m, n]`` bool.
    keys: ``[m]`` keys.
    round_idx: scalar round index.
    client_parallel: ``'vmap'`` or ``'map'`` (``lax.map`` over chunks of
      ``chunk_size`` clients, each chunk vmapped).
    chunk_size: clients per chunk for ``'map'`` (``None``: 1).

  Returns:
    stacked new params ``[m, ...]`` and stacked ``ClientMetrics``.
  """
  if client_parallel == 'vmap':
    return jax.vmap(client_update, in_axes=(None, 0, 0, 0, None))(
        params, batch, mask, keys, round_idx)
  if client_parallel == 'map':
    return jax.lax.map(
        lambda a: client_update(params, a[0], a[1], a[2], round_idx),
        (batch, mask, keys), batch_size=chunk_size)
  raise ValueError(f'unknown client_parallel {client_parallel!r}; '
                   f'expected one of {CLIENT_PARALLEL}')


def split_by_parameter(stack, mesh: jax.sharding.Mesh):
  """Constrains each leaf ``[C, *shape]`` to a split along a parameter axis.

  The split axis is the first of ``shape`` whose size divides over the mesh's
  (single) axis; a leaf with none keeps its sharding. Used inside a jitted
  program, it makes XLA move a client-split stack to a parameter split with
  one all-to-all.
  """
  (axis,) = mesh.axis_names
  n = mesh.size

  def one(x):
    for d in range(1, x.ndim):
      if x.shape[d] % n == 0:
        spec = [None] * x.ndim
        spec[d] = axis
        return jax.lax.with_sharding_constraint(
            x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec)))
    return x

  return jax.tree.map(one, stack)


def make_round_fn(client_update: Callable, aggregator: agg_lib.Aggregator, *,
                  num_clients: int, clients_per_round: int, seed: int,
                  client_parallel: Optional[str] = None,
                  chunk_size: Optional[int] = None, attack: Optional[Attack] = None,
                  defender: Any = None, jit: bool = True,
                  client_sharding: Optional[jax.sharding.NamedSharding] = None,
                  aggregate_layout: str = 'params') -> Callable:
  """Builds ``round_fn(state, data, attack_data=None, defender_data=None)``.

  ``round_fn`` returns ``(new_state, RoundMetrics)``.

  Args:
    client_update: from :func:`fl_jax.client.make_client_update`.
    aggregator: an :class:`fl_jax.aggregators.Aggregator` (reduces to one row).
    num_clients: ``K``, the number of clients in ``data``.
    clients_per_round: ``m <= K``.
    seed: the training seed; round keys are ``fold_in(key(seed), round)``.
    client_parallel: ``'vmap'`` or ``'map'``; ``None`` picks by backend.
    chunk_size: clients per vmapped chunk when ``client_parallel='map'``.
    attack: optional malicious behaviour; ``attack_data`` (any pytree, e.g. the
      attacker's pooled data) is passed through to ``attack.apply``.
    defender: optional :class:`fl_jax.defender.Defender`; ``defender_data``
      (its held-out sets) is passed to ``defender.check``. The state's
      ``defender_state`` must come from ``defender.init``.
    jit: return the jitted function (server state donated) or the raw one.
    client_sharding: ``None``, or a sharding that splits a leading axis over
      devices (``distributed.split_leading(distributed.make_mesh(D,
      'clients'))``): the sampled clients' data and their updates are
      constrained to it, so each device trains ``m / D`` clients and the
      aggregator reduces over a client-sharded stack (XLA inserts the
      collectives). ``m`` must be a multiple of ``D``. Same results as
      unsharded, to float rounding.
    aggregate_layout: with ``client_sharding``, how the stack of updates is
      split when the aggregator sees it. ``'params'`` (default): one
      all-to-all moves it from a split by client to a split by parameter
      (each leaf along its first axis that divides over the devices), so
      every rule works on whole columns of clients and only its result is
      gathered: about ``m / D + 2`` updates move per device for every rule.
      ``'clients'``: the rule runs on the client split as it is; a weighted
      mean then needs only an all-reduce (2 updates per device for any
      ``m``), but order statistics and Krum gather the whole stack (``m``
      updates per device). ``python benchmarks/collectives.py`` prints both.

  ``data`` is a :class:`fl_jax.data.ClientData`-like object with fields
  ``x[K, n, ...]``, ``y[K, n]``, ``mask[K, n]``, ``num_examples[K]``; it is an
  argument (not a closed-over constant) so it is not baked into the program.
  """
  for name, v in (('num_clients', num_clients), ('clients_per_round', clients_per_round)):
    if not isinstance(v, int) or v <= 0:
      raise ValueError(f'{name} must be a positive int, got {v!r}')
  if clients_per_round > num_clients:
    raise ValueError(f'clients_per_round ({clients_per_round}) must be <= '
                     f'num_clients ({num_clients})')
  client_parallel = client_parallel or default_client_parallel()
  if client_parallel not in CLIENT_PARALLEL:
    raise ValueError(f'unknown client_parallel {client_parallel!r}; '
                     f'expected one of {CLIENT_PARALLEL}')
  if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
    raise ValueError(f'chunk_size must be a positive int or None, got {chunk_size!r}')
  if client_sharding is not None:
    n_dev = client_sharding.mesh.size
    if clients_per_round % n_dev:
      raise ValueError(f'clients_per_round={clients_per_round} does not split over the '
                       f'{n_dev} devices of client_sharding; use a multiple of {n_dev}')
    split = lambda tree: jax.lax.with_sharding_constraint(tree, client_sharding)
  else:
    split = lambda tree: tree
  if aggregate_layout not in AGGREGATE_LAYOUTS:
    raise ValueError(f'aggregate_layout={aggregate_layout!r}; expected one of '
                     f'{AGGREGATE_LAYOUTS}')
  if client_sharding is not None and aggregate_layout == 'params':
    to_rule = lambda tree: split_by_parameter(tree, client_sharding.mesh)
  else:
    to_rule = lambda tree: tree
  seed_key = jax.random.key(seed)

  def round_fn(state: ServerState, data, attack_data=None, defender_data=None) -> tuple:
    if data.x.shape[0] != num_clients:
      raise ValueError(f'data holds {data.x.shape[0]} clients, expected {num_clients}')
    sample_key, train_key, attack_key, defender_key = round_keys(seed_key, state.round)
    if attack is not None and attack.sample is not None:
      ids = attack.sample(sample_key, state.round)
    else:
      ids = sample_clients(sample_key, num_clients, clients_per_round)
    batch, mask = split((ClientBatch(data.x[ids], data.y[ids]), data.mask[ids]))
    keys = jax.vmap(lambda i: jax.random.fold_in(train_key, i))(ids)
    new_params, cm = run_clients(client_update, state.params, batch, mask, keys,
                                 state.round, client_parallel=client_parallel,
                                 chunk_size=chunk_size)
    updates = split(jax.tree.map(lambda w_i, w: w_i - w[None], new_params, state.params))
    weights = cm.num_examples.astype(jnp.float32)
    info = {}
    if attack is not None:
      updates, weights, info = attack.apply(state.params, updates, weights, ids,
                                            attack_key, state.round, attack_data)
    agg_update, agg_state, diag = agg_lib.aggregate(aggregator, to_rule(updates), weights,
                                                    state.agg_state)
    params = tree_math.tree_add(state.params, agg_update)
    defender_state, dinfo = state.defender_state, {}
    if defender is not None:
      accept, defender_state, dinfo = defender.check(params, state.defender_state,
                                                     defender_data, defender_key)
      params = tree_math.tree_where(accept, params, state.params)
    metrics = RoundMetrics(
        client_ids=ids, train_loss=cm.train_loss, num_examples=cm.num_examples,
        update_norms=tree_math.stacked_l2_norms(updates),
        aggregate_norm=tree_math.tree_l2_norm(agg_update), diagnostics=diag,
        attack=info, defender=dinfo)
    new_state = ServerState(params, state.round + 1, agg_state, defender_state)
    if client_sharding is not None:
      # The new model (an all-gather of the rule's result) and the small per-client
      # figures are whole on every device: readable on every process, and the next
      # round gets its state with the sharding it was compiled for.
      whole = jax.sharding.NamedSharding(client_sharding.mesh, jax.sharding.PartitionSpec())
      new_state, metrics = jax.lax.with_sharding_constraint((new_state, metrics), whole)
    return new_state, metrics

  return jax.jit(round_fn, donate_argnums=0) if jit else round_fn
