"""The multi-round driver: a thin host loop around one jitted round function.

``train(config, workdir)`` builds everything from a config (a dict or an
``ml_collections.ConfigDict``; see ``launch/configs/mnist_fedavg.py`` for the
keys), runs the rounds, evaluates every ``eval_every`` rounds and writes

* ``workdir/config.json`` -- the resolved config;
* ``workdir/metrics.jsonl`` -- one JSON object per evaluation (round,
  test_accuracy, train_loss, elapsed seconds, ...);
* ``workdir/summary.json`` -- final metrics by name, rounds and wall seconds;
* ``workdir/checkpoint.npz`` -- the server state, every ``checkpoint_every``
  rounds and at the end. ``resume=True`` continues from it; because every key
  derives from ``(seed, round)``, a resumed run ends with the same model as an
  uninterrupted one. A resume refuses a config that differs from the stored
  ``config.json`` in other keys than :data:`RESUME_SAFE_KEYS` (or those the
  caller allows), and fewer ``rounds`` than the checkpoint holds;
* ``workdir/events.out.tfevents.*`` -- the ``metrics.jsonl`` scalars as
  TensorBoard events (``tensorboard --logdir workdir``).

Float settings must be finite and in range (:data:`FLOAT_RANGES`); a round
that leaves the global model non-finite, or whose sampled clients all report
a non-finite loss, stops the run with :class:`TrainingDivergedError` naming
the round and the likely cause.

Library code never reads flags; ``launch/train.py`` only parses them.
"""
import json
import os
import sys
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import adversarial
from fl_jax import aggregators as agg_lib
from fl_jax import client as client_lib
from fl_jax import data as data_lib
from fl_jax import metrics as metrics_lib
from fl_jax import models as models_lib
from fl_jax import tree_math
from fl_jax.metrics.writer import JsonlWriter, to_jsonable
from fl_jax.simulation import checkpoint as ckpt_lib
from fl_jax.simulation import distributed
from fl_jax.simulation import edge_task as edge_lib
from fl_jax.simulation.round import init_server_state, make_round_fn
from fl_jax.types import is_traced

REQUIRED_KEYS = (
    'dataset', 'data_dir', 'num_cert', 'num_val', 'partition', 'dirichlet_alpha',
    'min_client_size', 'data_seed', 'client_pool_size', 'num_clients',
    'clients_per_round', 'rounds', 'seed', 'client_parallel', 'chunk_size',
    'model', 'conv_impl', 'local_epochs', 'batch_size', 'lr', 'lr_decay',
    'momentum', 'weight_decay', 'adv_train', 'adv_eps', 'adv_steps',
    'adv_step_size', 'adv_fraction', 'aggregator', 'norm_bound', 'dp_sigma',
    'eval_every', 'eval_pgd_eps', 'eval_pgd_steps', 'eval_pgd_restarts',
    'eval_pgd_points', 'checkpoint_every', 'init_checkpoint', 'client_devices',
    'aggregate_layout', 'model_width', 'num_byzantine', 'multi_krum_m', 'trim_beta', 'gm_nu',
    'gm_tol', 'gm_max_iters', 'attack', 'defender', 'eval_ap_ratio', 'eval_pgd_temperature')
# Keys of the edge-case attacks ('edge_blackbox', 'edge_pgd', 'edge_replacement').
EDGE_KEYS = (
    'num_malicious', 'malicious_seed', 'attack_schedule', 'attack_frequency',
    'attack_start_round', 'attack_min_malicious', 'attack_epochs', 'edge_source',
    'edge_dir', 'edge_digit', 'edge_target', 'edge_num_train', 'edge_num_clean',
    'edge_num_test', 'edge_attacker_share', 'pgd_delta', 'replacement_delta',
    'replacement_send_delta', 'delta_decay', 'project_every', 'edge_honest_clients')
ATTACK_SCHEDULES = ('fixed_pool', 'fixed_frequency')

CHECKPOINT = 'checkpoint.npz'
# Keys a resumed run may change: they decide how long the run is and when it
# evaluates or saves, never what a round computes (every key derives from
# (seed, round), and evaluation keys from (seed + 1, round)).
RESUME_SAFE_KEYS = ('rounds', 'eval_every', 'checkpoint_every')
# (low, high, low inclusive, high inclusive) of float settings; an unlisted
# float only needs to be finite. SGD learning rates above 10 diverge on every
# model of fl_jax.models; images are in [0, 1], so radii and magnitudes are too.
FLOAT_RANGES = {
    'lr': (0.0, 10.0, False, True),
    'attack_lr': (0.0, 10.0, True, True),
    'distill_lr': (0.0, 10.0, True, True),
    'adaptive_lr': (0.0, 10.0, True, True),
    'lr_decay': (0.0, 1.0, False, True),
    'delta_decay': (0.0, 1.0, False, True),
    'momentum': (0.0, 1.0, True, False),
    'weight_decay': (0.0, 1.0, True, False),
    'dirichlet_alpha': (0.0, float('inf'), False, False),
    'adv_eps': (0.0, 1.0, True, True),
    'adv_step_size': (0.0, 1.0, True, True),
    'adv_fraction': (0.0, 1.0, True, True),
    'adaptive_eps': (0.0, 1.0, True, True),
    'eval_pgd_eps': (0.0, 1.0, True, True),
    'defender_cert_eps': (0.0, 1.0, True, True),
    'backdoor_magnitude': (0.0, 1.0, True, True),
    'backdoor_poison_fraction': (0.0, 1.0, True, True),
    'backdoor_adv_fraction': (0.0, 1.0, True, True),
    'edge_attacker_share': (0.0, 1.0, True, True),
    'defender_acc_ratio': (0.0, 1.0, True, True),
    'norm_bound': (0.0, float('inf'), True, False),
    'dp_sigma': (0.0, float('inf'), True, False),
    'model_width': (0.0, float('inf'), False, False),
}


def _floats(key: str, value):
  """``(name, float)`` of every float in ``value`` (a number or nested sequence)."""
  if isinstance(value, bool) or is_traced(value):
    return []
  if isinstance(value, float) or isinstance(value, np.floating):
    return [(key, float(value))]
  if isinstance(value, (list, tuple)):
    return [item for i, v in enumerate(value) for item in _floats(f'{key}[{i}]', v)]
  return []


def check_float_settings(cfg: Mapping[str, Any]) -> None:
  """Raises ValueError naming the first non-finite or out-of-range float setting.

  Every float of the config (and of its tuples, e.g. ``eval_pgd_eps``) must
  be finite; the keys of :data:`FLOAT_RANGES` must also lie in their range.
  Traced values (a vectorized sweep's per-run settings) are checked by the
  sweep on the host before tracing.
  """
  for key in sorted(cfg):
    bounds = FLOAT_RANGES.get(key)
    for name, v in _floats(key, cfg[key]):
      if not np.isfinite(v):
        raise ValueError(f'{name} must be finite, got {v!r}')
      if bounds is None:
        continue
      lo, hi, lo_in, hi_in = bounds
      interval = f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
      if v < lo or (v == lo and not lo_in):
        raise ValueError(f"{name} must be {'>=' if lo_in else '>'} {lo:g} (range {interval}), "
                         f'got {v!r}')
      if v > hi or (v == hi and not hi_in):
        raise ValueError(f"{name} must be {'<=' if hi_in else '<'} {hi:g} (range {interval}), "
                         f'got {v!r}')


def config_to_dict(config) -> dict:
  if hasattr(config, 'to_dict'):
    config = config.to_dict()
  return dict(config)


def validate_config(cfg: Mapping[str, Any]) -> None:
  """Raises ValueError naming missing keys or bad values."""
  missing = [k for k in REQUIRED_KEYS if k not in cfg]
  if missing:
    raise ValueError(f'config lacks keys {missing}; build configs from '
                     'launch/configs/mnist_fedavg.py (get_config() holds every key with its '
                     'default) and override what differs')
  if isinstance(cfg['client_devices'], bool) or not isinstance(cfg['client_devices'], int) or (
      cfg['client_devices'] < 1 and cfg['client_devices'] != -1):
    raise ValueError(f"client_devices must be an int >= 1 or -1 (all devices), got "
                     f"{cfg['client_devices']!r}")
  for k in ('num_clients', 'clients_per_round', 'rounds', 'local_epochs',
            'batch_size', 'eval_every', 'checkpoint_every'):
    if not isinstance(cfg[k], int) or cfg[k] <= 0:
      raise ValueError(f'{k} must be a positive int, got {cfg[k]!r}')
  for k in ('num_cert', 'num_val', 'client_pool_size', 'chunk_size'):
    if not isinstance(cfg[k], int) or cfg[k] < 0:
      raise ValueError(f'{k} must be a non-negative int, got {cfg[k]!r}')
  check_float_settings(cfg)
  if cfg['clients_per_round'] > cfg['num_clients']:
    raise ValueError(f"clients_per_round ({cfg['clients_per_round']}) must be <= "
                     f"num_clients ({cfg['num_clients']})")
  if cfg['partition'] not in ('iid', 'dirichlet'):
    raise ValueError(f"unknown partition {cfg['partition']!r}; expected 'iid' or 'dirichlet'")
  if cfg['model'] not in models_lib.MODELS:
    raise ValueError(f"unknown model {cfg['model']!r}; expected one of {sorted(models_lib.MODELS)}")
  if cfg['dataset'] not in data_lib.DATASET_NAMES:
    raise ValueError(f"unknown dataset {cfg['dataset']!r}; expected one of "
                     f'{sorted(data_lib.DATASET_NAMES)}')
  if edge_lib.has_edge_task(cfg):
    missing = [k for k in EDGE_KEYS if k not in cfg]
    if missing:
      raise ValueError(f"an edge-case config (attack {cfg['attack']!r}, edge_source "
                       f"{cfg.get('edge_source')!r}) needs the config keys {missing} "
                       '(see launch/configs/edge_case.py)')
    edge_lib.check_edge_config(cfg)
  if cfg['attack'] and cfg['attack_schedule'] not in ATTACK_SCHEDULES:
    raise ValueError(f"unknown attack_schedule {cfg['attack_schedule']!r}; expected one "
                     f'of {ATTACK_SCHEDULES}')


class Experiment(NamedTuple):
  """Everything built from a config (handy in notebooks and tests)."""
  config: dict
  model: models_lib.Model
  clients: data_lib.ClientData
  test: data_lib.Dataset
  cert: data_lib.Dataset
  val: data_lib.Dataset
  client_update: Callable
  aggregator: agg_lib.Aggregator
  round_fn: Callable
  attack: Any = None            # simulation.Attack or None
  attack_data: Any = None       # the attacker's pooled data
  is_malicious: Any = None      # bool [K] or None
  defender: Any = None          # defender.Defender or None
  defender_data: Any = None     # defender.DefenderData or None
  trigger: Any = None           # the backdoor trigger [H, W, C] or None
  target: Any = None            # the edge-case evaluation sets (target_task) or None


def build_craft(cfg, model, cert=None):
  """The crafting function of ``cfg['attack']`` and the trigger (or None).

  ``cert``: the defender's certification set (``Dataset``), which the
  ``'adaptive'`` attacker knows (certified-FAT Section 4).
  """
  from fl_jax import attacks  # pylint: disable=g-import-not-at-top
  name = cfg['attack']
  if edge_lib.is_edge_attack(cfg):
    return build_edge_craft(cfg, model), None
  hp = client_lib.LocalSGD(cfg['attack_epochs'], cfg['attack_batch_size'], cfg['attack_lr'],
                           1.0, cfg['momentum'], cfg['weight_decay'])
  if name == 'backdoor':
    trigger = attacks.stripe_trigger(model.input_shape, cfg['backdoor_magnitude'])
    craft = attacks.backdoor_craft(
        model.apply, trigger, cfg['backdoor_target'], hp,
        poison_fraction=cfg['backdoor_poison_fraction'],
        adv_fraction=cfg['backdoor_adv_fraction'], eps=cfg['adv_eps'],
        steps=cfg['adv_steps'], step_size=cfg['adv_step_size'],
        warmup_epochs=cfg['backdoor_warmup_epochs'])
    return craft, trigger
  dhp = hp._replace(local_epochs=cfg['distill_epochs'], lr=cfg['distill_lr'])
  if name == 'distillation':
    return attacks.distillation_craft(model.apply, temperature=cfg['distill_temperature'],
                                      teacher_hp=dhp, student_hp=dhp), None
  if name == 'adaptive':
    if cert is None:
      raise ValueError("attack 'adaptive' needs the defender's certification set")
    n = cfg['adaptive_points'] or cfg['defender_cert_points']
    if not 0 < n <= cert.x.shape[0]:
      raise ValueError(f'adaptive_points ({n}) must be in [1, num_cert={cert.x.shape[0]}]')
    eps = cfg['adaptive_eps'] or float(cfg['defender_cert_eps'][0])
    mode = cfg['adaptive_mode']
    objective = attacks.certification_objective(
        model.apply, cert.x[:n], cert.y[:n], eps, mode=mode,
        chunk_size=cfg['adaptive_chunk'] or None)
    rhp = hp._replace(local_epochs=cfg['adaptive_epochs'],
                      lr=cfg['adaptive_lr'])
    return attacks.adaptive_distillation_craft(
        model.apply, objective, temperature=cfg['distill_temperature'],
        teacher_hp=dhp, student_hp=dhp, refine_hp=rhp,
        weight=cfg['adaptive_weight'], match_global=(mode == 'match')), None
  raise ValueError(f"unknown attack {name!r}; expected '', 'backdoor', 'distillation', "
                   f"'adaptive' or one of {edge_lib.EDGE_ATTACKS}")


def build_client_update(cfg, model):
  """The honest clients' local training of ``cfg``."""
  hp = client_lib.LocalSGD(cfg['local_epochs'], cfg['batch_size'], cfg['lr'],
                           cfg['lr_decay'], cfg['momentum'], cfg['weight_decay'])
  return client_lib.make_client_update(build_loss(cfg, model.apply), hp)


def build_edge_craft(cfg, model):
  """The edge-case paper's attack of ``cfg`` (Section 2 (a)-(c)).

  ``edge_blackbox`` trains on ``D'`` exactly like an honest client;
  ``edge_pgd`` trains ``attack_epochs`` epochs with the honest learning-rate
  schedule, projected every ``project_every`` steps onto the l2 ball of radius
  ``pgd_delta * delta_decay**t``; ``edge_replacement`` trains in the ball of
  ``replacement_delta``, boosts by ``n_S / n_M`` and projects the boosted
  update onto ``replacement_send_delta`` (0: sends it unprojected).
  """
  from fl_jax import attacks  # pylint: disable=g-import-not-at-top
  name = cfg['attack']
  if name == 'edge_blackbox':
    return attacks.blackbox_craft(build_client_update(cfg, model))
  hp = client_lib.LocalSGD(cfg['attack_epochs'], cfg['batch_size'], cfg['lr'],
                           cfg['lr_decay'], cfg['momentum'], cfg['weight_decay'])
  trainer = attacks.make_local_trainer(adversarial.standard_loss(model.apply), hp,
                                       project_every=cfg['project_every'] or None)
  if name == 'edge_pgd':
    return attacks.pgd_craft(trainer, delta0=cfg['pgd_delta'], decay=cfg['delta_decay'])
  send = cfg['replacement_send_delta']
  if not is_traced(send) and not send:
    send = None
  return attacks.replacement_craft(trainer, delta0=cfg['replacement_delta'],
                                   decay=cfg['delta_decay'], send_delta0=send)


def malicious_mask(cfg) -> np.ndarray:
  """bool ``[K]``: the config's ``num_malicious`` clients drawn with ``malicious_seed``."""
  from fl_jax import attacks  # pylint: disable=g-import-not-at-top
  return attacks.malicious_pool(cfg['num_clients'], cfg['num_malicious'],
                                cfg['malicious_seed'])


def attacker_pool(cfg, clients):
  """``(is_malicious[K], pooled AttackerData)`` of the config's malicious pool."""
  from fl_jax import attacks  # pylint: disable=g-import-not-at-top
  is_mal = malicious_mask(cfg)
  mask = np.asarray(clients.mask)[is_mal]
  data = attacks.attacker_data(np.asarray(clients.x)[is_mal][mask],
                               np.asarray(clients.y)[is_mal][mask])
  return is_mal, data


def build_attack(cfg, model, data: 'ExperimentData'):
  """``(Attack, attack_data, is_malicious, trigger)`` of the config, or Nones.

  The attacker's data is the malicious clients' pooled data, or ``D'`` of the
  edge-case task.
  """
  if not cfg['attack']:
    return None, None, None, None
  if data.edge is not None:
    from fl_jax import attacks  # pylint: disable=g-import-not-at-top
    is_mal = malicious_mask(cfg)
    adata = attacks.attacker_data(data.edge.attack_x, data.edge.attack_y)
  else:
    is_mal, adata = attacker_pool(cfg, data.clients)
  attack, trigger = build_attack_fn(cfg, model, is_mal, data.cert)
  return attack, adata, is_mal, trigger


def build_attack_fn(cfg, model, is_malicious, cert=None):
  """``(Attack, trigger)`` of the config given the malicious pool, or Nones.

  Needs no client data, so a vectorized sweep builds it inside its traced
  program with per-run settings (e.g. ``attack_lr``) as traced values.
  """
  if not cfg['attack']:
    return None, None
  from fl_jax import attacks  # pylint: disable=g-import-not-at-top
  if cfg['attack_schedule'] == 'fixed_frequency':
    part = attacks.fixed_frequency(
        cfg['num_clients'], cfg['clients_per_round'], cfg['attack_frequency'],
        attacker_ids=tuple(int(i) for i in np.flatnonzero(is_malicious)),
        offset=cfg['attack_frequency'] - 1, start_round=cfg['attack_start_round'])
  else:
    part = attacks.fixed_pool(cfg['num_clients'], cfg['num_malicious'], cfg['malicious_seed'],
                              start_round=cfg['attack_start_round'],
                              min_malicious=cfg['attack_min_malicious'],
                              is_malicious=is_malicious)
  craft, trigger = build_craft(cfg, model, cert)
  weight = None
  if edge_lib.is_edge_attack(cfg):  # the attacker reports the size of D'
    weight = float(cfg['edge_num_train'] + cfg['edge_num_clean'])
  return attacks.make_attack(part, craft, reported_weight=weight), trigger


DEFENDER_CHECKS = ('clean', 'pgd', 'cert_acc', 'cert_loss')


def build_defender(cfg, model, cert, val):
  """The certified defender of the config, or ``(None, None)``."""
  if not cfg['defender']:
    return None, None
  from fl_jax import defender as defender_lib  # pylint: disable=g-import-not-at-top
  checks = [c.strip() for c in cfg['defender_checks'].split(',') if c.strip()]
  bad = sorted(set(checks) - set(DEFENDER_CHECKS))
  if bad:
    raise ValueError(f'unknown defender checks {bad}; expected some of {DEFENDER_CHECKS}')
  nv, nc = cfg['defender_val_points'], cfg['defender_cert_points']
  if not 0 < nv <= val.x.shape[0] or not 0 < nc <= cert.x.shape[0]:
    raise ValueError(f'defender_val_points ({nv}) and defender_cert_points ({nc}) must be '
                     f'in [1, num_val={val.x.shape[0]}] and [1, num_cert={cert.x.shape[0]}]')
  flags = {c: c in checks for c in DEFENDER_CHECKS}
  cert_eps = tuple(float(e) for e in cfg['defender_cert_eps'])
  measure = defender_lib.make_measure(
      model.apply, pgd_eps=cfg['adv_eps'], pgd_steps=cfg['defender_pgd_steps'],
      cert_eps=cert_eps, clean=flags['clean'], pgd=flags['pgd'],
      cert_acc=flags['cert_acc'], cert_loss=flags['cert_loss'])
  acc_keys, loss_keys = defender_lib.metric_names(
      cfg['adv_eps'], cert_eps, clean=flags['clean'], pgd=flags['pgd'],
      cert_acc=flags['cert_acc'], cert_loss=flags['cert_loss'])
  d = defender_lib.make_defender(measure, acc_keys=acc_keys, loss_keys=loss_keys,
                                 acc_ratio=cfg['defender_acc_ratio'],
                                 loss_tol=cfg['defender_loss_tol'],
                                 loss_atol=cfg['defender_loss_atol'],
                                 acc_atol=cfg['defender_acc_atol'],
                                 loss_down_tol=cfg['defender_loss_down_tol'])
  data = defender_lib.DefenderData(jnp.asarray(val.x[:nv]), jnp.asarray(val.y[:nv]),
                                   jnp.asarray(cert.x[:nc]), jnp.asarray(cert.y[:nc]))
  return d, data


def build_loss(cfg, apply_fn):
  if cfg['adv_train']:
    return adversarial.adversarial_loss(
        apply_fn, eps=cfg['adv_eps'], steps=cfg['adv_steps'],
        step_size=cfg['adv_step_size'], fraction=cfg['adv_fraction'])
  return adversarial.standard_loss(apply_fn)


def build_aggregator(cfg) -> agg_lib.Aggregator:
  build = getattr(agg_lib, 'build', None)
  if build is None:  # only the FedAvg rule is available
    if cfg['aggregator'] != 'mean' or cfg['norm_bound'] or cfg['dp_sigma']:
      raise ValueError(f"aggregator {cfg['aggregator']!r} is not available")
    return agg_lib.weighted_mean()
  hp = {}
  name = cfg['aggregator']
  if name in ('krum', 'multi_krum', 'bulyan'):
    hp['num_byzantine'] = cfg['num_byzantine']
  if name == 'multi_krum' and cfg['multi_krum_m']:
    hp['m'] = cfg['multi_krum_m']
  if name == 'trimmed_mean':
    hp['beta'] = cfg['trim_beta']
  if name == 'geometric_median':
    hp.update(nu=cfg['gm_nu'], tol=cfg['gm_tol'],
              max_iters=cfg['gm_max_iters'])
  norm_bound = cfg['norm_bound']
  if not is_traced(norm_bound) and not norm_bound:
    norm_bound = None   # 0 = no clipping
  return build(name, norm_bound=norm_bound,
               dp_sigma=cfg['dp_sigma'], seed=cfg['seed'], **hp)


class ExperimentData(NamedTuple):
  """The data sets of a config: held-out sets, test set and client partition."""
  clients: data_lib.ClientData
  test: data_lib.Dataset
  cert: data_lib.Dataset
  val: data_lib.Dataset
  input_shape: tuple
  num_classes: int
  edge: Optional[edge_lib.EdgeTask] = None


def load_data(cfg: Mapping[str, Any]) -> ExperimentData:
  """Loads the data set and partitions it over clients as ``cfg`` says."""
  data_dir = cfg['data_dir'] or None
  train_ds = data_lib.load_dataset(cfg['dataset'], 'train', data_dir=data_dir)
  test_ds = data_lib.load_dataset(cfg['dataset'], 'test', data_dir=data_dir)
  return partition_data(cfg, train_ds, test_ds)


def partition_data(cfg: Mapping[str, Any], train_ds, test_ds) -> ExperimentData:
  """Held-out sets and the client partition of loaded data (see :func:`load_data`)."""
  cert, val, rest = data_lib.holdout_split(train_ds, cfg['num_cert'], cfg['num_val'])
  if cfg['client_pool_size']:
    n = cfg['client_pool_size']
    if n > rest.x.shape[0]:
      raise ValueError(f'client_pool_size {n} exceeds the {rest.x.shape[0]} '
                       'training points left after the held-out sets')
    rest = rest._replace(x=rest.x[:n], y=rest.y[:n])
  edge = None
  if edge_lib.has_edge_task(cfg):
    edge = edge_lib.build_edge_task(cfg, rest, test_ds)
    rest = edge.pool
  clients = data_lib.make_federated(
      rest, cfg['num_clients'], partition=cfg['partition'],
      alpha=cfg['dirichlet_alpha'], seed=cfg['data_seed'],
      min_size=cfg['min_client_size'])
  if edge is not None and edge.honest_y.size:
    honest = np.flatnonzero(~malicious_mask(cfg))
    k = cfg['edge_honest_clients']
    if not isinstance(k, int) or not 0 <= k <= honest.size:
      raise ValueError(f'edge_honest_clients must be in [0, {honest.size}] (0: all honest '
                       f'clients), got {k!r}')
    if k:  # only the first k honest clients in a seeded order hold them
      honest = np.random.default_rng([cfg['data_seed'], 104729]).permutation(honest)[:k]
    clients, owner = edge_lib.add_to_clients(clients, edge.honest_x, edge.honest_y, honest,
                                             seed=cfg['data_seed'])
    edge = edge._replace(honest_clients=owner)
  return ExperimentData(clients, test_ds, cert, val, tuple(train_ds.x.shape[1:]),
                        train_ds.num_classes, edge)


def build_model(cfg: Mapping[str, Any], input_shape, num_classes) -> models_lib.Model:
  """The model of ``cfg``; ``model_width`` (if not 1) scales its hidden widths."""
  kwargs = {}
  width = cfg['model_width']
  if width != 1.0:
    if cfg['model'] not in WIDTH_MODELS:
      raise ValueError(f"model_width={width!r} needs a model with a width multiplier "
                       f"({WIDTH_MODELS}), got model {cfg['model']!r}")
    kwargs['width'] = float(width)
  return models_lib.get_model(cfg['model'], input_shape, num_classes,
                              conv_impl=cfg['conv_impl'] or None, **kwargs)


WIDTH_MODELS = ('lenet5', 'lenet', 'mlp')


class RoundParts(NamedTuple):
  """What one round is made of, built from a config without touching client data."""
  client_update: Callable
  aggregator: agg_lib.Aggregator
  attack: Any
  defender: Any
  round_fn: Callable
  trigger: Any


def client_sharding(cfg: Mapping[str, Any]):
  """``None``, or the split of the sampled clients over ``cfg['client_devices']`` devices."""
  n = cfg['client_devices']
  if n == 1:
    return None
  return distributed.split_leading(
      distributed.make_mesh(None if n == -1 else n, distributed.CLIENTS_AXIS))


def build_round(cfg: Mapping[str, Any], model: models_lib.Model, cert, val, *,
                jit: bool = True) -> RoundParts:
  """The round of ``cfg`` (client update, rule, attack, defender, ``round_fn``).

  Values of the sweepable keys (:data:`fl_jax.simulation.batch.TRACED_KEYS`)
  may be traced: a vectorized sweep calls this inside its program with one
  run's settings, so that the round is the same function whether it runs
  alone or as one of ``R`` vmapped runs.
  """
  client_update = build_client_update(cfg, model)
  aggregator = build_aggregator(cfg)
  attack, trigger = None, None
  if cfg['attack']:
    attack, trigger = build_attack_fn(cfg, model, malicious_mask(cfg), cert)
  defender, _ = build_defender(cfg, model, cert, val)
  round_fn = make_round_fn(
      client_update, aggregator, num_clients=cfg['num_clients'],
      clients_per_round=cfg['clients_per_round'], seed=cfg['seed'],
      client_parallel=cfg['client_parallel'] or None,
      chunk_size=cfg['chunk_size'] or None, attack=attack, defender=defender, jit=jit,
      client_sharding=client_sharding(cfg),
      aggregate_layout=cfg['aggregate_layout'])
  return RoundParts(client_update, aggregator, attack, defender, round_fn, trigger)


def build_experiment(config) -> Experiment:
  cfg = config_to_dict(config)
  validate_config(cfg)
  data = load_data(cfg)
  model = build_model(cfg, data.input_shape, data.num_classes)
  parts = build_round(cfg, model, data.cert, data.val)
  _, attack_data, is_malicious, _ = build_attack(cfg, model, data)
  _, defender_data = build_defender(cfg, model, data.cert, data.val)
  return Experiment(cfg, model, data.clients, data.test, data.cert, data.val,
                    parts.client_update, parts.aggregator, parts.round_fn, parts.attack,
                    attack_data, is_malicious, parts.defender, defender_data, parts.trigger,
                    target_task(data))


def target_task(data: ExperimentData):
  """The edge-case evaluation sets of the data (a dict of arrays), or ``None``.

  ``target_x`` / ``target_y``: the target task (edge test inputs, attacker's
  label); ``honest_x`` / ``honest_y``: the edge examples honest clients hold
  with their true label, when there are any.
  """
  if data.edge is None:
    return None
  out = {'target_x': data.edge.target_x, 'target_y': data.edge.target_y}
  if data.edge.honest_y.size:
    out.update(honest_x=data.edge.honest_x, honest_y=data.edge.honest_y)
  return out


def evaluate_arrays(cfg: Mapping[str, Any], model: models_lib.Model, params, round_idx,
                    test_x, test_y, trigger=None, target=None, clients=None) -> dict:
  """Test-set metrics of ``params`` as float32 scalars (traceable, vmappable).

  ``test_accuracy``; ``backdoor_success`` with a trigger;
  ``target_accuracy`` (the edge-case backdoor's success: the share of the
  target-task inputs classified as the attacker's label) and
  ``honest_edge_accuracy`` (the edge examples honest clients hold, against
  their true label) with ``target`` from :func:`target_task`; with
  ``eval_ap_ratio`` and ``clients``, ``ap_ratio`` (the edge-case paper's
  accuracy parity ``min_k p_k / max_k p_k`` over the honest clients' own
  data) and ``client_accuracy_min``; and
  ``pgd_accuracy@eps`` (plus ``temp_pgd_accuracy@eps`` with
  ``eval_pgd_temperature``) for each ``eval_pgd_eps`` on the first
  ``eval_pgd_points`` test points, the random starts keyed by
  ``fold_in(key(seed + 1), round)``. The sequential driver evaluates on the
  host with it and a vectorized sweep inside its compiled program.
  """
  out = {'test_accuracy': metrics_lib.accuracy(model.apply, params, test_x, test_y)}
  if trigger is not None:
    from fl_jax import attacks  # pylint: disable=g-import-not-at-top
    out['backdoor_success'] = attacks.backdoor_success_rate(
        model.apply, params, test_x, test_y, trigger, cfg['backdoor_target'])
  if target is not None:
    from fl_jax import attacks  # pylint: disable=g-import-not-at-top
    out['target_accuracy'] = attacks.target_accuracy(model.apply, params, target['target_x'],
                                                     target['target_y'])
    if 'honest_x' in target:
      out['honest_edge_accuracy'] = metrics_lib.accuracy(model.apply, params,
                                                         target['honest_x'], target['honest_y'])
  if cfg['eval_ap_ratio'] and clients is not None:
    acc = metrics_lib.per_client_accuracy(model.apply, params, clients.x, clients.y,
                                          clients.mask)
    if cfg['attack'] or edge_lib.has_edge_task(cfg):  # the attackers' partitions
      acc = jnp.where(jnp.asarray(malicious_mask(cfg)), jnp.nan, acc)
    out['ap_ratio'] = metrics_lib.ap_ratio(acc)
    out['client_accuracy_min'] = jnp.nanmin(acc)
  if cfg['eval_pgd_eps']:
    n = min(cfg['eval_pgd_points'], test_x.shape[0])
    key = jax.random.fold_in(jax.random.key(cfg['seed'] + 1), round_idx)
    temps = [('pgd_accuracy', 1.0)]
    if cfg['eval_pgd_temperature']:  # the distillation attacker's view
      temps.append(('temp_pgd_accuracy', cfg['eval_pgd_temperature']))
    for name, t in temps:
      for eps in cfg['eval_pgd_eps']:
        out[f'{name}@{float(eps):g}'] = metrics_lib.pgd_accuracy_at(
            model.apply, params, test_x[:n], test_y[:n], key, float(eps),
            steps=cfg['eval_pgd_steps'], restarts=cfg['eval_pgd_restarts'], temperature=t)
  return out


def evaluate(exp: Experiment, params, round_idx: int) -> dict:
  """Test-set metrics of ``params`` as Python floats (see :func:`evaluate_arrays`)."""
  out = evaluate_arrays(exp.config, exp.model, params, round_idx, exp.test.x, exp.test.y,
                        exp.trigger, exp.target, exp.clients)
  return {k: float(v) for k, v in out.items()}


def round_record(rm, *, attack: bool, defender: bool) -> dict:
  """The per-round figures written to ``rounds.jsonl`` (arrays; traceable).

  ``client_ids``, mean ``train_loss``, ``aggregate_norm``, the attack's
  ``active`` / ``num_malicious`` / ``crafted_norm``, the median distance of
  the honest updates to the global model, whether Krum / Multi-Krum selected
  an attacker (``attack/selected``), and every figure and verdict of the
  defender.
  """
  rec = {'client_ids': rm.client_ids, 'train_loss': jnp.mean(rm.train_loss),
         'aggregate_norm': rm.aggregate_norm}
  if attack:
    rec.update({f'attack/{k}': rm.attack[k] for k in ('active', 'num_malicious',
                                                       'crafted_norm')})
    # How far the honest updates reach (the radius a stealthy attacker hides in).
    honest = ~rm.attack['replaced']
    d = jnp.where(honest, rm.attack['distances'], jnp.nan)
    rec['attack/honest_distance_median'] = jnp.where(jnp.any(honest), jnp.nanmedian(d), 0.0)
    from fl_jax import attacks  # pylint: disable=g-import-not-at-top
    if any(k in rm.diagnostics for k in attacks.SELECTION_KEYS):  # Krum / Multi-Krum
      rec['attack/selected'] = attacks.attacker_selected(rm.diagnostics, rm.attack['replaced'])
      rec['selected'] = attacks.selection_mask(rm.diagnostics)   # [m], per sampled client
  if defender:
    rec.update({f'defender/{k}': v for k, v in rm.defender.items()})
  return rec


def defender_reason(rec: Mapping[str, Any]) -> str:
  """``'accepted'`` or ``'rejected: <failed checks>'`` of a round record."""
  if bool(rec['defender/accept']):
    return 'accepted'
  failed = [k[len('defender/ok/'):] for k, v in rec.items()
            if k.startswith('defender/ok/') and not bool(v)]
  return 'rejected: ' + (', '.join(failed) if failed else 'non-finite metric')


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def place_round_data(exp: Experiment):
  """Puts the clients' data and the defender's held-out sets on the devices, once.

  With ``client_devices`` the clients' data is split by client and the
  defender's validation and certification points by point over the same
  devices (each where its count divides over them; else replicated), so a
  round moves only the sampled clients' rows and the defender measures its
  points in parallel.
  """
  sharding = client_sharding(exp.config)
  if sharding is None:
    return jax.device_put((exp.clients, exp.defender_data))
  n_dev = sharding.mesh.size
  rep = distributed.replicated(sharding.mesh)
  place = lambda a: jax.device_put(a, sharding if a.shape[0] % n_dev == 0 else rep)
  return jax.tree.map(place, (exp.clients, exp.defender_data))


class TrainingDivergedError(FloatingPointError):
  """A round left the global model, or every sampled client's loss, non-finite."""


def check_round_finite(cfg: Mapping[str, Any], round_idx: int, model_finite: bool,
                       client_losses, last_checkpoint: int = 0) -> None:
  """Raises :class:`TrainingDivergedError` naming the round and the likely cause.

  Args:
    cfg: the run's config (its settings are quoted in the message).
    round_idx: rounds done, counting this one.
    model_finite: whether every parameter of the new global model is finite.
    client_losses: ``[m]`` local training losses of the round's sampled clients.
    last_checkpoint: the round the checkpoint holds (named as the way back).

  The model stops being finite when an aggregate overflows it; every client
  loss is non-finite when local training diverges, which every rule then
  excludes, so the model no longer moves.
  """
  lr = (f"lr={cfg['lr']!r}, lr_decay={cfg['lr_decay']!r}, momentum={cfg['momentum']!r}, "
        f"local_epochs={cfg['local_epochs']!r}")
  back = (f'; the checkpoint holds round {last_checkpoint}, from before this round'
          if last_checkpoint else '')
  if not model_finite:
    raise TrainingDivergedError(
        f'round {round_idx}: the global model became non-finite (NaN or Inf) and the run '
        f'is stopped. Likely cause: local training diverged ({lr}) or aggregator '
        f"{cfg['aggregator']!r} (norm_bound={cfg['norm_bound']!r}) let an overflowing "
        f'update through; lower lr or clip updates with norm_bound{back}.')
  if not np.isfinite(np.asarray(client_losses)).any():
    raise TrainingDivergedError(
        f'round {round_idx}: the local training loss of every sampled client is '
        f'non-finite, so every update was excluded and the model no longer learns; the '
        f'run is stopped. Likely cause: local training diverged ({lr}); lower lr{back}.')


def resume_differences(stored: Mapping[str, Any], cfg: Mapping[str, Any],
                       allow=()) -> list:
  """Keys whose values differ between a stored ``config.json`` and ``cfg``.

  Both are compared as JSON (tuples as lists); a key present in only one of
  them differs. Keys in :data:`RESUME_SAFE_KEYS` or ``allow`` are left out.
  """
  a, b = to_jsonable(dict(stored)), to_jsonable(dict(cfg))
  skip = set(RESUME_SAFE_KEYS) | set(allow)
  return sorted(k for k in set(a) | set(b)
                if k not in skip and (k not in a or k not in b or a[k] != b[k]))


def _check_resume(workdir: str, cfg: Mapping[str, Any], allow) -> None:
  """Raises ValueError when ``cfg`` changes keys of the stored run that ``allow`` does not."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found beside the checkpoint: cannot check that the '
                            'resumed run has the same config; start in a new workdir')
  with open(path) as f:
    stored = json.load(f)
  unknown = sorted(set(allow) - set(stored) - set(cfg))
  if unknown:
    raise ValueError(f'resume_allow names keys {unknown} that neither the stored nor the new '
                     'config has')
  diff = resume_differences(stored, cfg, allow)
  if diff:
    shown = ', '.join(f'{k}: {stored.get(k, "<absent>")!r} -> {to_jsonable(cfg.get(k, "<absent>"))!r}'
                      for k in diff)
    raise ValueError(
        f'cannot resume {workdir}: the config differs from the stored config.json in '
        f'{diff} ({shown}). Resuming would continue the old run with other settings. '
        f'Use a new workdir, restore those values, or allow the keys explicitly '
        f'(resume_allow={diff}; --resume_allow={",".join(diff)} in launch.train).')


def _load_resume_state(ckpt_path: str, state):
  """``(state, elapsed, pending)`` of a checkpoint; ``pending`` = [loss sum, rounds].

  ``pending`` is the sum of the per-round mean train losses since the last
  logged evaluation and their count; a checkpoint written without it (by
  the vectorized sweep) gives zeros.
  """
  pending0 = np.zeros(2, np.float64)
  try:
    state, elapsed, pending = ckpt_lib.load(ckpt_path, (state, np.float64(0.0), pending0))
  except ckpt_lib.CheckpointCorruptError:
    raise
  except ValueError:
    state, elapsed = ckpt_lib.load(ckpt_path, (state, np.float64(0.0)))
    pending = pending0
  return state, float(elapsed), np.asarray(pending, np.float64)


def format_duration(seconds: float) -> str:
  """``'1:02:03'`` (h:mm:ss) or ``'2:03'`` (m:ss) of a non-negative duration."""
  seconds = max(int(round(seconds)), 0)
  h, rest = divmod(seconds, 3600)
  m, sec = divmod(rest, 60)
  return f'{h}:{m:02d}:{sec:02d}' if h else f'{m}:{sec:02d}'


def progress_line(round_idx: int, rounds: int, metrics: Mapping[str, float], train_loss: float,
                  rounds_per_second: float) -> str:
  """The progress line of an evaluation: metrics, speed and time left.

  The time left assumes the speed of the window since the last evaluation.
  """
  extras = ' '.join(f'{k}={v:.4f}' for k, v in metrics.items() if k != 'test_accuracy')
  eta = (rounds - round_idx) / rounds_per_second if rounds_per_second > 0 else float('inf')
  eta_s = format_duration(eta) if np.isfinite(eta) else '?'
  return (f"round {round_idx:5d}/{rounds}  test_acc={metrics['test_accuracy']:.4f}  "
          f'train_loss={train_loss:.4f}  {extras}  {rounds_per_second:.2f} rounds/s  '
          f'ETA {eta_s}')


_all_finite = jax.jit(tree_math.tree_all_finite)


def train(config, workdir: str, resume: bool = False,
          log: Callable[[str], None] = _log, resume_allow=()) -> dict:
  """Runs a federated experiment; returns the summary dict.

  Args:
    config: dict or ConfigDict (see ``launch/configs/mnist_fedavg.py``).
    workdir: output folder (created).
    resume: continue from ``workdir/checkpoint.npz`` if it exists. The config
      must equal the stored ``config.json`` except for
      :data:`RESUME_SAFE_KEYS` and ``resume_allow``, and ask for at least the
      rounds the checkpoint holds (ValueError otherwise). A finished run
      resumed with the same rounds runs nothing and keeps its summary.
    log: progress printer.
    resume_allow: further config keys a resume may change.

  Raises:
    TrainingDivergedError: a round left the model or every client loss
      non-finite (see :func:`check_round_finite`).
  """
  t_start = time.time()
  exp = build_experiment(config)
  cfg = exp.config
  os.makedirs(workdir, exist_ok=True)
  ckpt_path = os.path.join(workdir, CHECKPOINT)
  resuming = resume and os.path.exists(ckpt_path)
  if resuming:
    _check_resume(workdir, cfg, resume_allow)

  if cfg['init_checkpoint']:
    params0, init_cfg = load_init_checkpoint(cfg)
    log(f"initial model from {cfg['init_checkpoint']} (round {init_cfg['rounds']})")
  else:
    params0 = exp.model.init(jax.random.key(cfg['seed']))
  defender_state = ()
  if exp.defender is not None:
    defender_state = exp.defender.init(params0, exp.defender_data,
                                       jax.random.key(cfg['seed'] + 2))
  state = init_server_state(params0, exp.aggregator, defender_state=defender_state)
  elapsed_before, pending = 0.0, np.zeros(2, np.float64)
  if resuming:
    state, elapsed_before, pending = _load_resume_state(ckpt_path, state)
    if int(state.round) > cfg['rounds']:
      raise ValueError(f"rounds={cfg['rounds']} is fewer than the {int(state.round)} rounds "
                       f'the checkpoint in {workdir} already holds; ask for at least '
                       f'{int(state.round)} rounds or use a new workdir')
  writes = distributed.is_main_process()  # several processes: process 0 writes the files
  if writes:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(to_jsonable(cfg), f, indent=2, sort_keys=True)
  writer = (JsonlWriter(os.path.join(workdir, 'metrics.jsonl'), tensorboard_dir=workdir)
            if writes else _NoWriter())
  if resuming:
    writer.truncate_after(int(state.round))
    log(f'resumed from {ckpt_path} at round {int(state.round)}')
  elif writes and os.path.exists(writer.path):
    os.remove(writer.path)

  data, defender_data = place_round_data(exp)
  sharding = client_sharding(cfg)
  if sharding is not None:  # the state where the round leaves it: no second compilation
    state = jax.device_put(state, distributed.replicated(sharding.mesh))
  per_round = exp.attack is not None or exp.defender is not None
  round_writer = JsonlWriter(os.path.join(workdir, 'rounds.jsonl')) if writes else _NoWriter()
  if resuming:
    round_writer.truncate_after(int(state.round))
  elif writes and os.path.exists(round_writer.path):
    os.remove(round_writer.path)
  rounds = cfg['rounds']
  # Per-round mean train losses since the last evaluation (float64, on the host,
  # so that a resumed run sums them in the same order as an uninterrupted one).
  loss_sum, loss_count = float(pending[0]), int(pending[1])
  last = None
  last_ckpt = int(state.round)
  t_loop = time.time()
  t_window, r_window = time.time(), int(state.round)
  try:
    while int(state.round) < rounds:
      state, rm = exp.round_fn(state, data, exp.attack_data, defender_data)
      r = int(state.round)  # rounds done
      client_losses = np.asarray(rm.train_loss)
      check_round_finite(cfg, r, bool(_all_finite(state.params)), client_losses, last_ckpt)
      loss_sum += float(np.mean(client_losses, dtype=np.float64))
      loss_count += 1
      if per_round:  # every attack and every defender decision, with its figures
        rec = {'round': r, **round_record(rm, attack=exp.attack is not None,
                                          defender=exp.defender is not None)}
        if exp.defender is not None:
          rec['defender/reason'] = defender_reason(rec)
        round_writer.write(rec)
      if r % cfg['eval_every'] == 0 or r == rounds:
        ev = evaluate(exp, state.params, r)
        train_loss = loss_sum / loss_count
        loss_sum, loss_count = 0.0, 0
        now = time.time()
        rps = (r - r_window) / max(now - t_window, 1e-9)
        t_window, r_window = now, r
        elapsed = elapsed_before + now - t_loop
        last = {'round': r, **ev, 'train_loss': train_loss,
                'elapsed_seconds': elapsed, 'rounds_per_second': rps,
                'update_norm_mean': float(jnp.mean(rm.update_norms)),
                'aggregate_norm': float(rm.aggregate_norm)}
        writer.write(last)
        log(progress_line(r, rounds, ev, train_loss, rps))
      if writes and (r % cfg['checkpoint_every'] == 0 or r == rounds):
        ckpt_lib.save(ckpt_path, (state, np.float64(elapsed_before + time.time() - t_loop),
                                  np.array([loss_sum, loss_count], np.float64)))
      if r % cfg['checkpoint_every'] == 0 or r == rounds:
        last_ckpt = r
  finally:
    writer.close()

  if last is None:  # nothing left to run: the last evaluation, else the restored model
    done = int(state.round)
    rows = [row for row in (metrics_lib.read_jsonl(writer.path)
                            if writes and os.path.exists(writer.path) else [])
            if row.get('round') == done]
    last = rows[-1] if rows else {'round': done, **evaluate(exp, state.params, done)}
  summary = {**{k: v for k, v in last.items() if k not in ('rounds_per_second',)},
             'rounds': int(state.round),
             'wall_seconds': time.time() - t_start,
             'train_seconds': elapsed_before + time.time() - t_loop}
  if writes:
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(to_jsonable(summary), f, indent=2, sort_keys=True)
  return summary


class _NoWriter:
  """The writer of a process that does not write (not process 0 of a multi-process job)."""
  path = os.devnull

  def write(self, record) -> None:
    del record

  def truncate_after(self, round_idx: int) -> None:
    del round_idx

  def close(self) -> None:
    """Nothing to close: this writer never opened a file."""


def load_init_checkpoint(cfg: Mapping[str, Any]):
  """Params and config of ``cfg['init_checkpoint']``, checked against ``cfg``.

  Raises ``ValueError`` naming both when the checkpoint holds another model or
  data set than ``cfg`` asks for, or when its run is unfinished (its checkpoint
  holds fewer rounds than its config asked for): an experiment that starts
  from "the trained model" must not silently start from a partial one.
  """
  _, params, init_cfg = restore(cfg['init_checkpoint'])
  def what(c):
    return (c['model'], c.get('model_width', 1.0), c['dataset'])
  if what(init_cfg) != what(cfg):
    raise ValueError(f"init_checkpoint {cfg['init_checkpoint']!r} holds (model, "
                     f'model_width, dataset) = {what(init_cfg)}, expected {what(cfg)}')
  if init_cfg['checkpoint_round'] < init_cfg['rounds']:
    raise ValueError(f"init_checkpoint {cfg['init_checkpoint']!r} holds round "
                     f"{init_cfg['checkpoint_round']} of {init_cfg['rounds']}: that run is "
                     'unfinished; finish it with --resume first')
  return params, init_cfg


def restore(workdir: str):
  """Rebuilds the model of a ``train`` workdir and loads its parameters.

  Returns:
    ``(model, params, config_dict)``; ``config_dict`` is the run's config
    plus ``'checkpoint_round'``, the number of rounds the checkpoint holds
    (less than ``config_dict['rounds']`` if the run was interrupted).
  """
  cfg_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f'{cfg_path} not found: is {workdir!r} a workdir of launch.train?')
  with open(cfg_path) as f:
    cfg = json.load(f)
  input_shape, num_classes = data_lib.dataset_info(cfg['dataset'])
  model = build_model({'conv_impl': '', **cfg}, input_shape, num_classes)
  template = model.init(jax.random.key(0))
  state = ckpt_lib.load(os.path.join(workdir, CHECKPOINT),
                        (ServerStateTemplate(template, np.int32(0)), np.float64(0.0)))
  return model, state[0].params, {**cfg, 'checkpoint_round': int(state[0].round)}


class ServerStateTemplate(NamedTuple):
  """Loads ``params`` and ``round`` from a checkpoint (the rest is skipped)."""
  params: Any
  round: Any
