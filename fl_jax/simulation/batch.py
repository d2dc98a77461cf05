"""Vectorized sweeps: ``R`` runs of one experiment as one compiled program.

A sweep's runs differ in a few config values. Those that change no array shape
and no code -- the *traced keys* below (seeds, learning-rate schedule, SGD
momentum and weight decay, adversarial radius and step, clipping bound, DP
noise, defender tolerances, the attacker's learning rate, the edge-case
attacks' radii, radius decay and attack frequency) -- become arrays
with a leading *runs* axis ``R``; the round of one run is built from its
config by :func:`fl_jax.simulation.train.build_round` with those values
traced, and the runs axis is a ``jax.vmap`` over it::

    block(state[R], settings[R]) = vmap(one_run)(state, settings)
    one_run = scan over S evaluations of (scan over E rounds of round_fn; evaluate)

or, with ``runs_chunk = C < R``, a ``lax.map`` over chunks of ``C`` vmapped
runs (:func:`map_runs`; the same values). Accelerators take the whole vmap;
XLA:CPU gets nothing from batching runs that each have their own weights, and
runs them one after another inside the program (``C = 1``,
:func:`default_runs_chunk`).

so ``S * E`` rounds and ``S`` evaluations (clean, PGD, backdoor and target-task
accuracy)
are one dispatch. Every other key (model, rule, clients per round, Krum's
``f``, local epochs, ...) is *static*: runs that differ in one belong to
different groups, one program each (:func:`group_runs`). Keys whose zero
means "off" (``norm_bound``, ``dp_sigma``, ``replacement_send_delta``) split
groups by on / off only.

Client data is shared by the runs of a group (each run samples its own
clients from its seed) unless the runs differ in a partition key
(``data_seed``, ``dirichlet_alpha``, ``min_client_size``); then each run gets
its own partition (and its own edge-case data ``D'`` and edge sets), padded to
a common width and stacked ``[R, K, n, ...]``
(it must fit in memory). Padding changes no result: client training draws
its randomness per example index.

A run of a batch equals the same run alone (``train.train``) to float32
rounding: same keys (``fold_in(key(seed), round)``), same round function.
The runs axis is the leading axis of every state leaf, so it can be sharded
over a device mesh.
"""
import json
import os
import sys
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import data as data_lib
from fl_jax import tree_math
from fl_jax.metrics.writer import JsonlWriter, to_jsonable
from fl_jax.simulation import checkpoint as ckpt_lib
from fl_jax.simulation import distributed
from fl_jax.simulation import train as train_lib
from fl_jax.simulation.round import init_server_state

# Config keys that may differ between the runs of one program, with their dtype.
TRACED_KEYS = {
    'seed': jnp.int32,
    'lr': jnp.float32,
    'lr_decay': jnp.float32,
    'momentum': jnp.float32,
    'weight_decay': jnp.float32,
    'adv_eps': jnp.float32,
    'adv_step_size': jnp.float32,
    'norm_bound': jnp.float32,
    'dp_sigma': jnp.float32,
    'attack_lr': jnp.float32,
    'defender_acc_ratio': jnp.float32,
    'defender_loss_tol': jnp.float32,
    'defender_loss_atol': jnp.float32,
    'defender_acc_atol': jnp.float32,
    # The edge-case attacks' strengths and schedule.
    'pgd_delta': jnp.float32,
    'replacement_delta': jnp.float32,
    'replacement_send_delta': jnp.float32,
    'delta_decay': jnp.float32,
    'attack_frequency': jnp.int32,
}
# Traced keys whose zero switches a stage off: on / off is static.
SWITCH_KEYS = ('norm_bound', 'dp_sigma', 'replacement_send_delta')
# Keys of the client data: runs that differ in one get their own data.
DATA_KEYS = ('data_seed', 'dirichlet_alpha', 'min_client_size')
BATCH_CHECKPOINT = 'batch_checkpoint.npz'


def _static_items(cfg: Mapping[str, Any]) -> dict:
  out = {}
  for k, v in cfg.items():
    if k in SWITCH_KEYS:
      out[k] = bool(v)
    elif k not in TRACED_KEYS and k not in DATA_KEYS:
      out[k] = v
  return out


def group_signature(cfg: Mapping[str, Any]) -> str:
  """The static part of a config: runs with equal signatures share a program."""
  return json.dumps(to_jsonable(_static_items(cfg)), sort_keys=True)


def group_runs(configs: Sequence[Mapping[str, Any]]) -> list:
  """Indices of ``configs`` grouped by :func:`group_signature`, in first-seen order."""
  groups = {}
  for i, cfg in enumerate(configs):
    groups.setdefault(group_signature(cfg), []).append(i)
  return list(groups.values())


def varying_keys(configs: Sequence[Mapping[str, Any]]) -> list:
  """Keys whose value is not the same in every config (sorted)."""
  keys = sorted(set().union(*configs))
  return [k for k in keys
          if len({json.dumps(to_jsonable(c.get(k)), sort_keys=True) for c in configs}) > 1]


def check_batch(configs: Sequence[Mapping[str, Any]]) -> None:
  """Raises ValueError unless ``configs`` can run as one vectorized program.

  The error names the first key that differs in a way that changes an array
  shape or the code, and two of its values.
  """
  if not configs:
    raise ValueError('a batch needs at least one run')
  for cfg in configs:
    if cfg['client_devices'] != 1:
      raise ValueError(f'client_devices={cfg["client_devices"]!r}: a vectorized batch splits '
                       'its runs over devices (run_batch(mesh=), launch.sweep --devices), '
                       'not the clients of each run; set client_devices=1')
  ref = _static_items(configs[0])
  for i, cfg in enumerate(configs[1:], 1):
    items = _static_items(cfg)
    for k in sorted(set(ref) | set(items)):
      if json.dumps(to_jsonable(ref.get(k))) != json.dumps(to_jsonable(items.get(k))):
        what = ('switches a stage on in some runs and off in others (0 = off)'
                if k in SWITCH_KEYS else 'changes array shapes or the program')
        raise ValueError(
            f'runs of one vectorized batch must agree on {k!r}, which {what}: run 0 has '
            f'{k}={configs[0].get(k)!r}, run {i} has {k}={cfg.get(k)!r}; put them in '
            'separate groups (launch.sweep groups runs this way)')


def _pad_clients(c: data_lib.ClientData, n: int) -> data_lib.ClientData:
  pad = n - c.x.shape[1]
  if pad == 0:
    return c
  def p(a):
    return np.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
  return data_lib.ClientData(p(c.x), p(c.y), p(c.mask), c.num_examples)


def _pad_rows(tree, n: int):
  """Pads every leaf of an attacker-data pytree along axis 0 to ``n`` rows."""
  return jax.tree.map(lambda a: np.pad(np.asarray(a), [(0, n - np.shape(a)[0])]
                                       + [(0, 0)] * (np.ndim(a) - 1)), tree)


def _stack(trees):
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


class Batch(NamedTuple):
  """One group of runs, ready to compile (see :func:`build_batch`).

  Attributes:
    configs: the ``R`` resolved configs.
    static: the config of run 0 (its traced values are replaced per run).
    traced: the traced keys that differ between runs (the program's inputs).
    settings: ``{key: [R] array}`` of those keys.
    model: the model (shared).
    clients: client data, shared or stacked ``[R, ...]`` (``data_axis``).
    data_axis: ``None`` (shared) or ``0`` (per run).
    attack_data: the attacker's pooled data (shared or stacked, same axis).
    defender_data: the defender's held-out sets (shared).
    test: the test set (shared).
    cert: the certification set (shared).
    val: the validation set (shared).
    init_params: parameters to start from (``init_checkpoint``) or ``None``.
    target: the edge-case evaluation sets (``train.target_task``), shared or
      stacked like the client data, or ``None``.
  """
  configs: list
  static: dict
  traced: tuple
  settings: dict
  model: Any
  clients: Any
  data_axis: Optional[int]
  attack_data: Any
  defender_data: Any
  test: Any
  cert: Any
  val: Any
  init_params: Any
  target: Any = None


def build_batch(configs: Sequence[Any]) -> Batch:
  """Validates ``R`` configs of one group and prepares their data.

  Every run's config is validated and its round built with its concrete
  values first, so a bad value raises the builder's own error naming it.

  Raises:
    ValueError: a config is invalid, or the runs differ in a static key
      (:func:`check_batch`).
  """
  configs = [train_lib.config_to_dict(c) for c in configs]
  for cfg in configs:
    train_lib.validate_config(cfg)
  check_batch(configs)
  static = dict(configs[0])
  traced = tuple(k for k in varying_keys(configs) if k in TRACED_KEYS)
  settings = {k: np.asarray([c[k] for c in configs], TRACED_KEYS[k]) for k in traced}
  data_dir = static['data_dir'] or None
  train_ds = data_lib.load_dataset(static['dataset'], 'train', data_dir=data_dir)
  test_ds = data_lib.load_dataset(static['dataset'], 'test', data_dir=data_dir)
  per_run = any(k in DATA_KEYS for k in varying_keys(configs))
  datas = [train_lib.partition_data(c, train_ds, test_ds)
           for c in (configs if per_run else configs[:1])]
  d0 = datas[0]
  model = train_lib.build_model(static, d0.input_shape, d0.num_classes)
  for cfg in configs:  # concrete checks of every run's values
    train_lib.build_round(cfg, model, d0.cert, d0.val, jit=False)
  attack_datas = [train_lib.build_attack(c, model, d)[1]
                  for c, d in zip(configs if per_run else configs[:1], datas)]
  target = train_lib.target_task(d0)
  if per_run:
    if target is not None:  # same shapes: the edge keys are static
      target = _stack([train_lib.target_task(d) for d in datas])
    width = max(d.clients.x.shape[1] for d in datas)
    clients = _stack([_pad_clients(d.clients, width) for d in datas])
    attack_data = None
    if attack_datas[0] is not None:
      rows = max(jax.tree.leaves(a)[0].shape[0] for a in attack_datas)
      attack_data = _stack([_pad_rows(a, rows) for a in attack_datas])
  else:
    clients, attack_data = d0.clients, attack_datas[0]
  _, defender_data = train_lib.build_defender(static, model, d0.cert, d0.val)
  init_params = None
  if static['init_checkpoint']:
    init_params, _ = train_lib.load_init_checkpoint(static)
  return Batch(configs, static, traced, settings, model, clients, 0 if per_run else None,
               attack_data, defender_data, d0.test, d0.cert, d0.val, init_params, target)


def _run_config(batch: Batch, settings: Mapping[str, Any]) -> dict:
  return {**batch.static, **settings}


def make_init_fn(batch: Batch) -> Callable:
  """``init(settings[R], defender_data, init_params) -> ServerState[R]`` (jitted)."""

  def one(settings, defender_data, init_params):
    cfg = _run_config(batch, settings)
    params = (init_params if init_params is not None
              else batch.model.init(jax.random.key(cfg['seed'])))
    parts = train_lib.build_round(cfg, batch.model, batch.cert, batch.val, jit=False)
    dstate = ()
    if parts.defender is not None:
      dstate = parts.defender.init(params, defender_data, jax.random.key(cfg['seed'] + 2))
    return init_server_state(jax.tree.map(jnp.copy, params), parts.aggregator,
                             defender_state=dstate)

  return jax.jit(jax.vmap(one, in_axes=(0, None, None), axis_size=len(batch.configs)))


def default_runs_chunk(num_runs: int) -> int:
  """Runs per vmapped chunk by backend: 1 on CPU, all ``num_runs`` elsewhere.

  On XLA:CPU a vmapped batch of runs is no faster than the same runs one
  after another inside the program (each run has its own weights, so the
  batched matrix products are ``R`` separate products whose ``R`` weight
  sets no longer fit in cache); accelerators want the whole batch at once.
  """
  return 1 if jax.default_backend() == 'cpu' else num_runs


def map_runs(fn: Callable, xs, num_runs: int, chunk: int):
  """``fn`` over the leading runs axis of ``xs``: ``lax.map`` over chunks of ``chunk`` vmapped runs.

  ``chunk >= num_runs`` is one ``jax.vmap`` over all runs; ``chunk == 1``
  runs ``fn`` unbatched on one run at a time (no degenerate batch axis,
  which XLA:CPU lays out badly); between, ``lax.map(..., batch_size=chunk)``.
  Every choice computes the same values.
  """
  if chunk < 1:
    raise ValueError(f'runs_chunk must be >= 1, got {chunk}')
  if chunk >= num_runs > 1:
    return jax.vmap(fn, axis_size=num_runs)(xs)
  return jax.lax.map(fn, xs, batch_size=None if chunk == 1 else chunk)


def make_block_fn(batch: Batch, *, evals_per_block: int,
                  runs_chunk: Optional[int] = None) -> Callable:
  """The vectorized block: ``evals_per_block`` x ``eval_every`` rounds of ``R`` runs.

  ``runs_chunk`` runs are vmapped together and the chunks mapped over
  (:func:`map_runs`); ``None`` picks by backend (:func:`default_runs_chunk`).

  Returns:
    ``block(state[R], settings[R], clients, attack_data, defender_data,
    test_x, test_y, target=None) -> (state[R], rounds, evals)``, jitted with the state
    donated. ``rounds`` is a dict of ``[R, S, E, ...]`` per-round figures
    (:func:`fl_jax.simulation.train.round_record` plus ``update_norm_mean``
    and ``done``, False for rounds past ``cfg['rounds']``, which leave the
    state unchanged); ``evals`` a dict of ``[R, S]`` test metrics after each
    ``eval_every`` rounds. ``block.num_traces()`` counts its compilations.
  """
  cfg0 = batch.static
  total, every = cfg0['rounds'], cfg0['eval_every']
  traces = [0]
  chunk = default_runs_chunk(len(batch.configs)) if runs_chunk is None else runs_chunk

  def one_run(state, settings, clients, attack_data, defender_data, test_x, test_y, target):
    cfg = _run_config(batch, settings)
    parts = train_lib.build_round(cfg, batch.model, batch.cert, batch.val, jit=False)

    def round_step(state, _):
      new, rm = parts.round_fn(state, clients, attack_data, defender_data)
      done = state.round < total
      rec = train_lib.round_record(rm, attack=parts.attack is not None,
                                   defender=parts.defender is not None)
      rec.update(update_norm_mean=jnp.mean(rm.update_norms), done=done)
      return tree_math.tree_where(done, new, state), rec

    def segment(state, _):
      state, recs = jax.lax.scan(round_step, state, None, length=every)
      ev = train_lib.evaluate_arrays(cfg, batch.model, state.params, state.round,
                                     test_x, test_y, parts.trigger, target, clients)
      return state, (recs, ev)

    state, (recs, evals) = jax.lax.scan(segment, state, None, length=evals_per_block)
    return state, recs, evals

  def block(state, settings, clients, attack_data, defender_data, test_x, test_y,
            target=None):
    traces[0] += 1
    num_runs = len(batch.configs)
    per_run = (state, settings)
    shared = dict(defender_data=defender_data, test_x=test_x, test_y=test_y)
    if batch.data_axis is None:
      shared.update(clients=clients, attack_data=attack_data, target=target)
    else:
      per_run += (clients, attack_data, target)

    def call(xs):
      if batch.data_axis is None:
        return one_run(*xs, **shared)
      st, se, c, a, t = xs
      return one_run(st, se, c, a, target=t, **shared)

    return map_runs(call, per_run, num_runs, chunk)

  fn = jax.jit(block, donate_argnums=0)

  def run(*args):
    return fn(*args)

  run.num_traces = lambda: traces[0]
  run.lower = fn.lower
  return run


def _evals_per_block(total_evals: int, requested: int) -> int:
  """The largest divisor of ``total_evals`` that is ``<= requested``."""
  s = max(1, min(requested, total_evals))
  while total_evals % s:
    s -= 1
  return s


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def run_batch(configs: Sequence[Any], workdirs: Sequence[str], *, batch_dir: str,
              resume: bool = False, evals_per_block: int = 4,
              log: Callable[[str], None] = _log, name: str = 'batch',
              mesh: Optional[jax.sharding.Mesh] = None,
              runs_chunk: Optional[int] = None) -> list:
  """Runs ``R`` configs of one group as one vectorized program.

  Writes for every run what ``train.train`` writes in its workdir
  (``config.json``, ``metrics.jsonl``, ``rounds.jsonl`` with an attack or a
  defender, ``summary.json`` and a final ``checkpoint.npz`` that
  ``train.restore`` reads), and the whole batch's state to
  ``batch_dir/batch_checkpoint.npz`` after every block; ``resume=True``
  continues from it, to the same result as an uninterrupted run.

  Args:
    configs: ``R`` configs (dicts or ConfigDicts) of one group.
    workdirs: ``R`` output folders.
    batch_dir: folder of the batch checkpoint.
    resume: continue from the batch checkpoint when there is one.
    evals_per_block: evaluations (of ``eval_every`` rounds each) per dispatch;
      the largest divisor of the number of evaluations not above it is used.
    log: progress printer.
    name: the group's name in progress lines.
    mesh: a :func:`runs_mesh` to split the runs over (``None``: the default
      device). ``R`` must be a multiple of its size; the result is the same.
    runs_chunk: runs vmapped together (:func:`map_runs`); ``None``: all of
      them with a mesh (XLA splits the vmapped runs over it), else
      :func:`default_runs_chunk`. The result does not depend on it.

  Returns:
    the ``R`` summaries (dicts), in the order of ``configs``.
  """
  t_start = time.time()
  if len(configs) != len(workdirs):
    raise ValueError(f'{len(configs)} configs but {len(workdirs)} workdirs')
  if len(set(workdirs)) != len(workdirs):
    raise ValueError(f'workdirs must be distinct, got {list(workdirs)}')
  if mesh is not None and len(configs) % mesh.size:
    raise ValueError(f'{len(configs)} runs do not split over the {mesh.size} devices of the '
                     f'mesh; use a number of runs that is a multiple of {mesh.size} (or fewer '
                     'devices)')
  batch = build_batch(configs)
  cfg0, num = batch.static, len(batch.configs)
  total, every = cfg0['rounds'], cfg0['eval_every']
  num_evals = -(-total // every)
  spb = _evals_per_block(num_evals, evals_per_block)
  settings = {k: jnp.asarray(v) for k, v in batch.settings.items()}
  defender_data = batch.defender_data
  state = make_init_fn(batch)(settings, defender_data, batch.init_params)
  per_round = bool(cfg0.get('attack')) or bool(cfg0.get('defender'))
  writes = distributed.is_main_process()  # several processes: only process 0 writes
  writers = [JsonlWriter(os.path.join(w, 'metrics.jsonl'), tensorboard_dir=w if writes else None)
             for w in workdirs]
  round_writers = [JsonlWriter(os.path.join(w, 'rounds.jsonl')) for w in workdirs]
  for cfg, w in zip(batch.configs, workdirs):
    if writes:
      os.makedirs(w, exist_ok=True)
      with open(os.path.join(w, 'config.json'), 'w') as f:
        json.dump(to_jsonable(cfg), f, indent=2, sort_keys=True)
  ckpt_path = os.path.join(batch_dir, BATCH_CHECKPOINT)
  elapsed_before = 0.0
  if resume and os.path.exists(ckpt_path):
    state, elapsed_before = ckpt_lib.load(ckpt_path, (state, np.float64(0.0)))
    elapsed_before = float(elapsed_before)
    done_rounds = int(np.asarray(state.round)[0])
    for wr in (*writers, *round_writers) if writes else ():
      wr.truncate_after(done_rounds)
    log(f'[{name}] resumed from {ckpt_path} at round {done_rounds}')
  else:
    for wr in (*writers, *round_writers) if writes else ():
      if os.path.exists(wr.path):
        os.remove(wr.path)
  if runs_chunk is None and mesh is not None:
    runs_chunk = num
  block = make_block_fn(batch, evals_per_block=spb, runs_chunk=runs_chunk)
  clients, attack_data, target = batch.clients, batch.attack_data, batch.target
  test_x, test_y = batch.test.x, batch.test.y
  if mesh is None:
    clients, attack_data, target, test_x, test_y = jax.device_put(
        (clients, attack_data, target, test_x, test_y))
  else:  # runs split over the mesh; shared data replicated, placed once
    per_run = batch.data_axis is not None
    state, settings = place((state, settings), mesh, True)
    clients, attack_data, target = place((clients, attack_data, target), mesh, per_run)
    test_x, test_y, defender_data = place((test_x, test_y, defender_data), mesh, False)
  last = [None] * num
  t_loop = time.time()
  r1 = int(distributed.to_host(state.round)[0])
  while r1 < total:
    r0 = r1
    t0 = time.time()
    state, recs, evals = block(state, settings, clients, attack_data, defender_data,
                               test_x, test_y, target)
    recs, evals = distributed.to_host((recs, evals))
    now = time.time()
    r1 = int(distributed.to_host(state.round)[0])
    rps = (r1 - r0) / max(now - t0, 1e-9)
    elapsed = elapsed_before + now - t_loop
    for i in range(num):
      for s in range(spb):
        seg = {k: v[i, s] for k, v in recs.items()}
        done = np.asarray(seg['done'])
        if not done.any():
          continue
        rounds_done = r0 + s * every + np.arange(every) + 1
        if per_round:
          for e in np.flatnonzero(done):
            rec = {'round': int(rounds_done[e]),
                   **{_run_key(k, batch.configs[i]): v[e] for k, v in seg.items()
                      if k not in ('done', 'update_norm_mean')}}
            if cfg0.get('defender'):
              rec['defender/reason'] = train_lib.defender_reason(rec)
            if writes:
              round_writers[i].write(rec)
        e_last = int(np.flatnonzero(done)[-1])
        last[i] = {'round': int(rounds_done[e_last]),
                   **{k: float(v[i, s]) for k, v in evals.items()},
                   'train_loss': float(np.mean(seg['train_loss'][done])),
                   'elapsed_seconds': elapsed, 'rounds_per_second': rps,
                   'update_norm_mean': float(seg['update_norm_mean'][e_last]),
                   'aggregate_norm': float(seg['aggregate_norm'][e_last])}
        if writes:
          writers[i].write(last[i])
    host_state = distributed.to_host(state)
    if writes:
      ckpt_lib.save(ckpt_path, (host_state, np.float64(elapsed)))
    acc = np.mean([l['test_accuracy'] for l in last])
    eta = (total - r1) / max(rps, 1e-9)
    log(f'[{name}] round {r1:5d}/{total}  {num} runs  {num * rps:.2f} run-rounds/s  '
        f'mean test_acc={acc:.4f}  ETA {eta:.0f} s')
  summaries = []
  host_state = distributed.to_host(state)
  for i, w in enumerate(workdirs):
    run_state = jax.tree.map(lambda a: a[i], host_state)
    if writes:
      ckpt_lib.save(os.path.join(w, train_lib.CHECKPOINT),
                    (run_state, np.float64(elapsed_before + time.time() - t_loop)))
    if last[i] is None:  # nothing left to run: read the last record written
      rows = [r for r in _read(writers[i].path)]
      last[i] = rows[-1] if rows else {'round': int(run_state.round)}
    summary = {**{k: v for k, v in last[i].items() if k != 'rounds_per_second'},
               'rounds': int(run_state.round), 'wall_seconds': time.time() - t_start,
               'train_seconds': elapsed_before + time.time() - t_loop}
    if writes:
      with open(os.path.join(w, 'summary.json'), 'w') as f:
        json.dump(to_jsonable(summary), f, indent=2, sort_keys=True)
    summaries.append(summary)
  for wr in writers:
    wr.close()
  log(f'[{name}] {num} runs done; compiled the block {block.num_traces()} time(s)')
  return summaries


RUNS_AXIS = distributed.RUNS_AXIS


def runs_mesh(num_devices: Optional[int] = None) -> jax.sharding.Mesh:
  """A one-axis device mesh named ``'runs'`` over the first ``num_devices`` devices.

  A batch run on it (:func:`run_batch` with ``mesh=``) keeps each run's state,
  settings and per-run data on one device: the runs axis is split over the
  mesh with ``jax.sharding.NamedSharding(mesh, P('runs'))``, shared data is
  replicated, and XLA partitions the vmapped program without any collective
  (runs never communicate). On one host with ``D`` devices a batch of ``R``
  runs then runs ``R / D`` per device; after
  :func:`fl_jax.simulation.distributed.initialize` the mesh spans the devices
  of every host.

  Args:
    num_devices: devices to use (default: all of ``jax.devices()``).

  Raises:
    ValueError: more devices requested than exist, or fewer than one.
  """
  return distributed.make_mesh(num_devices, RUNS_AXIS)


def place(tree, mesh, runs_axis: bool):
  """Puts ``tree`` on ``mesh``: split along its leading runs axis, or replicated."""
  sharding = distributed.split_leading(mesh) if runs_axis else distributed.replicated(mesh)
  return jax.device_put(tree, sharding)


def _run_key(key: str, cfg: Mapping[str, Any]) -> str:
  """A metric name with a traced radius named as a run alone names it."""
  if key.endswith('@adv_eps'):
    return key[:-len('adv_eps')] + format(cfg['adv_eps'], 'g')
  return key


def _read(path):
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
