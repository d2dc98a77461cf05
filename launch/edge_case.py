r"""Edge-case backdoors on MNIST against five aggregation rules.

The MNIST analogue of Task 2 of Wang et al. (NeurIPS 2020): the attacker wants
unusual 7s classified as 1. Steps:

1. honest FedAvg pre-training of the model for ``--pretrain_rounds`` (or load
   ``--pretrain_checkpoint``; the result is cached in the workdir);
2. the edge-case set: a Gaussian mixture (one component per class) on the
   pre-trained model's penultimate features, the ``--num_edge_train``
   lowest-density 7s of the clients' training pool (removed from the honest
   clients, so only the attacker holds them) and the ``--num_edge_test``
   lowest-density 7s of the test set (the target task), all labelled 1;
   ``--edge_npz`` replaces the training edge set by user-supplied arrays
   (e.g. ARDIS 7s);
3. for every (attack, defence) cell, ``--rounds`` rounds from the pre-trained
   model with an attacker forced into every ``--frequency``-th round
   (fixed-frequency pattern, first attack in the first round) training on
   ``D'`` = ``--num_edge_train`` edge + ``--num_clean`` clean samples;
4. one table (markdown + CSV) of target-task and clean accuracy per cell.

Attacks: ``none`` (baseline), ``blackbox`` (honest training on ``D'``), ``pgd``
(projected onto the l2 ball of radius ``delta_t = delta_0 * decay**t``
every ``--project_every`` steps), ``replacement`` (PGD in a smaller ball,
boosted by ``n_S / n_i``, then projected onto the sending radius: ``--pgd_delta``
capped at ``--norm_bound`` against clipping, ``--pgd_delta_robust`` against
the robust rules, none against the plain mean). Defences:
``mean`` (FedAvg), ``norm_clip`` (norm-difference clipping at
``--norm_bound``, then mean), ``krum``, ``multi_krum`` (``m = n - f``),
``geometric_median`` (RFA, smoothed Weiszfeld).

Command (the report's run: about 13 minutes on 2 busy CPU cores, plus 30 s of
pre-training)::

  python -m launch.edge_case --workdir=workdirs/edge_case

and, with the replacement attacker training in the same ball as PGD::

  python -m launch.edge_case --workdir=workdirs/edge_case_strong \
      --attacks=none,pgd,replacement --defences=mean,norm_clip,krum \
      --replacement_delta=1.5 --replacement_delta_robust=1.0

Smoke test: ``--smoke`` (tiny sizes; a few minutes on 2 CPU cores, mostly
compilation of the 20 cells).
"""
import csv
import json
import os
import sys
import time

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/edge_case', 'Output folder.')
_SMOKE = flags.DEFINE_bool('smoke', False, 'Tiny sizes, for a quick check.')
_PRETRAIN_CKPT = flags.DEFINE_string(
    'pretrain_checkpoint', '', 'A launch.train workdir or an .npz of params to '
    'start from (default: pre-train here, cached as workdir/pretrained.npz).')
_PRETRAIN_ROUNDS = flags.DEFINE_integer('pretrain_rounds', 50, 'Honest FedAvg rounds.')
_ROUNDS = flags.DEFINE_integer('rounds', 40, 'Rounds per (attack, defence) cell.')
_MODEL = flags.DEFINE_string('model', 'mlp', 'Model name (mlp: 784-100-10; lenet5 is the '
                             "paper's, about 10x slower on CPU).")
_NUM_CLIENTS = flags.DEFINE_integer('num_clients', 100, 'K.')
_PER_ROUND = flags.DEFINE_integer('clients_per_round', 10, 'm.')
_ALPHA = flags.DEFINE_float('alpha', 0.5, 'Dirichlet concentration (0 = IID).')
_POOL = flags.DEFINE_integer('client_pool_size', 0, 'Use only N training points (0 = all).')
_EPOCHS = flags.DEFINE_integer('local_epochs', 2, 'Honest local epochs.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Local batch size.')
_LR = flags.DEFINE_float('lr', 0.05, 'Initial local learning rate.')
_LR_DECAY = flags.DEFINE_float('lr_decay', 0.998, 'lr = lr0 * decay**round.')
_MOMENTUM = flags.DEFINE_float('momentum', 0.9, 'SGD momentum.')
_WD = flags.DEFINE_float('weight_decay', 1e-4, 'l2 weight decay.')
_FREQ = flags.DEFINE_integer('frequency', 10, 'An attacker every F rounds.')
_ATTACKS = flags.DEFINE_list('attacks', ['none', 'blackbox', 'pgd', 'replacement'],
                             'Attacks to run.')
_DEFENCES = flags.DEFINE_list(
    'defences', ['mean', 'norm_clip', 'krum', 'multi_krum', 'geometric_median'],
    'Aggregation rules to run.')
_NORM_BOUND = flags.DEFINE_float('norm_bound', 2.0, 'Norm-clipping threshold M.')
_NUM_BYZ = flags.DEFINE_integer('num_byzantine', 1, 'f for Krum / Multi-Krum.')
_SOURCE = flags.DEFINE_integer('source_class', 7, 'Class of the edge cases.')
_TARGET = flags.DEFINE_integer('target_label', 1, "Attacker's label.")
_N_EDGE_TRAIN = flags.DEFINE_integer('num_edge_train', 100, 'Edge samples in D\'.')
_N_CLEAN = flags.DEFINE_integer('num_clean', 100, 'Clean samples in D\'.')
_N_EDGE_TEST = flags.DEFINE_integer('num_edge_test', 200, 'Target-task test samples.')
_EDGE_NPZ = flags.DEFINE_string('edge_npz', '', 'User-supplied edge set (x, y) for D\'.')
_COV = flags.DEFINE_enum('covariance', 'full', ['diag', 'full'], 'GMM covariance.')
_GMM_POINTS = flags.DEFINE_integer('gmm_points', 10000, 'Pool points the GMM is fitted on.')
_PGD_DELTA = flags.DEFINE_float('pgd_delta', 1.5, 'PGD radius against norm clipping / mean.')
_PGD_DELTA_ROBUST = flags.DEFINE_float('pgd_delta_robust', 1.0,
                                       'PGD radius against Krum, Multi-Krum, RFA.')
_REPL_DELTA = flags.DEFINE_float('replacement_delta', 0.3,
                                 'Training radius of replacement (mean, clipping).')
_REPL_DELTA_ROBUST = flags.DEFINE_float('replacement_delta_robust', 0.25,
                                        'Training radius of replacement (robust rules).')
_DECAY = flags.DEFINE_float('delta_decay', 0.998, 'Per-round decay of the radii.')
_PROJECT_EVERY = flags.DEFINE_integer('project_every', 10, 'SGD steps between projections.')
_ATT_EPOCHS = flags.DEFINE_integer('attacker_epochs', 5,
                                   'Local epochs of the white-box attackers (0 = honest).')
_EVAL_POINTS = flags.DEFINE_integer('eval_points', 2000, 'Test points for clean accuracy '
                                    'during the run (the final one uses all).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed (init, sampling, partition, attack data).')


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def _config() -> dict:
  cfg = {h.name: h.value for h in globals().values()
         if isinstance(h, flags.FlagHolder)}
  if cfg['smoke']:
    cfg.update(num_clients=20, clients_per_round=5, client_pool_size=2000,
               pretrain_rounds=4, rounds=4, frequency=2, model='mlp',
               num_edge_train=20, num_clean=20, num_edge_test=20, gmm_points=1000,
               eval_points=500, local_epochs=1, covariance='diag')
  return cfg


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  from fl_jax import aggregators as agg_lib
  from fl_jax import attacks
  from fl_jax import client
  from fl_jax import data as data_lib
  from fl_jax import metrics
  from fl_jax import models
  from fl_jax import simulation
  from fl_jax.adversarial import standard_loss
  from fl_jax.metrics.writer import to_jsonable
  from fl_jax.simulation import checkpoint
  from fl_jax.simulation import train as train_lib
  # pylint: enable=g-import-not-at-top

  cfg = _config()
  workdir = cfg['workdir']
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(to_jsonable(cfg), f, indent=2, sort_keys=True)
  t_start = time.time()
  _log(f'devices: {jax.devices()}')

  # --- data: the clients' pool, partitioned; the test set ------------------
  train_ds = data_lib.load_dataset('mnist', 'train')
  test = data_lib.load_dataset('mnist', 'test')
  pool = train_ds
  if cfg['client_pool_size']:
    pool = pool._replace(x=pool.x[:cfg['client_pool_size']], y=pool.y[:cfg['client_pool_size']])
  K, m, seed = cfg['num_clients'], cfg['clients_per_round'], cfg['seed']
  if cfg['alpha'] > 0:
    lists = data_lib.partition_dirichlet(pool.y, K, cfg['alpha'], seed, min_size=10)
  else:
    lists = data_lib.partition_iid(len(pool.y), K, seed)
  n_max = max(len(l) for l in lists)
  clients_full = data_lib.pad_clients(pool, lists, n_max=n_max)

  model = models.get_model(cfg['model'], (28, 28, 1), 10)
  hp = client.LocalSGD(cfg['local_epochs'], cfg['batch_size'], cfg['lr'],
                       cfg['lr_decay'], cfg['momentum'], cfg['weight_decay'])
  client_update = client.make_client_update(standard_loss(model.apply), hp)
  mean = agg_lib.weighted_mean()
  eval_x, eval_y = test.x[:cfg['eval_points']], test.y[:cfg['eval_points']]

  # --- 1. honest pre-training (cached) --------------------------------------
  P = cfg['pretrain_rounds']
  cached = os.path.join(workdir, 'pretrained.npz')
  template = model.init(jax.random.key(seed))
  if cfg['pretrain_checkpoint']:
    src = cfg['pretrain_checkpoint']
    if os.path.isdir(src):
      _, params, src_cfg = train_lib.restore(src)
      P = int(src_cfg.get('rounds', P))
    else:
      params = checkpoint.load(src, template)
    _log(f'pre-trained model from {src}')
  elif os.path.exists(cached):
    params = checkpoint.load(cached, template)
    _log(f'pre-trained model from {cached}')
  else:
    t0 = time.time()
    fn = simulation.make_round_fn(client_update, mean, num_clients=K,
                                  clients_per_round=m, seed=seed)
    state = simulation.init_server_state(template, mean)
    data = jax.device_put(clients_full)
    norms = []
    for r in range(P):
      state, rm = fn(state, data)
      norms.append(np.asarray(rm.update_norms))
      if (r + 1) % 10 == 0 or r + 1 == P:
        acc = float(metrics.accuracy(model.apply, state.params, eval_x, eval_y))
        _log(f'pretrain round {r + 1}/{P}: clean {acc:.4f}, honest update norm '
             f'median {np.median(norms[-10:]):.3f} max {np.max(norms[-10:]):.3f}')
    params = state.params
    checkpoint.save(cached, params)
    _log(f'pre-training: {time.time() - t0:.1f} s')
  pre_clean = float(metrics.accuracy(model.apply, params, test.x, test.y))
  _log(f'pre-trained clean accuracy {pre_clean:.4f}')

  # --- 2. edge-case sets ------------------------------------------------------
  t0 = time.time()
  rng = np.random.default_rng(seed)
  fit_idx = rng.choice(len(pool.y), min(cfg['gmm_points'], len(pool.y)), replace=False)
  gmm = attacks.fit_class_gaussians_on(model.features, params, pool.x[fit_idx],
                                       pool.y[fit_idx], 10,
                                       covariance_type=cfg['covariance'])
  src_c, tgt = cfg['source_class'], cfg['target_label']
  edge_train = attacks.select_edge_cases(gmm, model.features, params, pool.x, pool.y,
                                         src_c, cfg['num_edge_train'], target_label=tgt)
  edge_test = attacks.select_edge_cases(gmm, model.features, params, test.x, test.y,
                                        src_c, cfg['num_edge_test'], target_label=tgt)
  # Only the attacker holds the training edge cases: drop them from the clients.
  honest_lists = [l[~np.isin(l, edge_train.index)] for l in lists]
  clients = jax.device_put(data_lib.pad_clients(pool, honest_lists, n_max=n_max))
  if cfg['edge_npz']:
    edge_train = attacks.load_edge_set(cfg['edge_npz'], target_label=tgt,
                                       expected_shape=(28, 28, 1))
  not_edge = np.setdiff1d(np.arange(len(pool.y)), edge_train.index)
  dx, dy, _ = attacks.mix_edge_and_clean(
      edge_train.x, edge_train.y, pool.x[not_edge], pool.y[not_edge],
      num_edge=min(cfg['num_edge_train'], len(edge_train.y)), num_clean=cfg['num_clean'],
      seed=seed)
  attack_data = attacks.attacker_data(dx, dy)
  all_test_src = test.y == src_c
  logp_test = attacks.log_density(gmm, attacks.compute_features(model.features, params,
                                                                 test.x[all_test_src]))
  _log(f'edge sets: {len(edge_train.y)} train / {len(edge_test.y)} test low-density '
       f'{src_c}s (test log-density {edge_test.log_density.max():.1f} vs median of all '
       f'test {src_c}s {np.median(logp_test):.1f}); {time.time() - t0:.1f} s')
  pre_target = float(attacks.target_accuracy(model.apply, params, edge_test.x, edge_test.y))
  pre_edge_true = float(metrics.accuracy(model.apply, params, edge_test.x,
                                         np.full(len(edge_test.y), src_c, np.int32)))
  _log(f'pre-trained: target-task accuracy {pre_target:.4f}, edge test classified as '
       f'{src_c}: {pre_edge_true:.4f}')

  # --- 3. the cells -----------------------------------------------------------
  def aggregator(name):
    build = getattr(agg_lib, 'build', None)
    if name == 'mean':
      return mean
    if build is None:
      raise ValueError(f'defence {name!r} needs fl_jax.aggregators.build')
    if name == 'norm_clip':
      return build('mean', norm_bound=cfg['norm_bound'])
    if name == 'krum':
      return build('krum', num_byzantine=cfg['num_byzantine'])
    if name == 'multi_krum':
      return build('multi_krum', num_byzantine=cfg['num_byzantine'])
    if name == 'geometric_median':
      return build('geometric_median', nu=1e-5, tol=1e-1, max_iters=500)
    raise ValueError(f'unknown defence {name!r}')

  att_hp = hp._replace(local_epochs=cfg['attacker_epochs'] or hp.local_epochs)
  trainer = attacks.make_local_trainer(standard_loss(model.apply), att_hp,
                                       project_every=cfg['project_every'])

  def craft(attack, defence):
    robust = defence in ('krum', 'multi_krum', 'geometric_median')
    if attack == 'blackbox':
      return attacks.blackbox_craft(client_update)
    if attack == 'pgd':
      delta = cfg['pgd_delta_robust'] if robust else cfg['pgd_delta']
      return attacks.pgd_craft(trainer, delta0=delta, decay=cfg['delta_decay'])
    if attack == 'replacement':
      delta = cfg['replacement_delta_robust'] if robust else cfg['replacement_delta']
      # No norm check under plain FedAvg: send the boosted update as it is.
      send = (None if defence == 'mean' else cfg['pgd_delta_robust'] if robust
              else min(cfg['pgd_delta'], cfg['norm_bound']))
      return attacks.replacement_craft(trainer, delta0=delta, decay=cfg['delta_decay'],
                                       send_delta0=send)
    raise ValueError(f'unknown attack {attack!r}')

  participation = attacks.fixed_frequency(K, m, cfg['frequency'], attacker_ids=(K - 1,),
                                          offset=P % cfg['frequency'], start_round=P)
  results = []
  for defence in cfg['defences']:
    agg = aggregator(defence)
    for attack_name in cfg['attacks']:
      t0 = time.time()
      attack = None
      if attack_name != 'none':
        attack = attacks.make_attack(participation, craft(attack_name, defence),
                                     reported_weight=float(len(dy)))
      fn = simulation.make_round_fn(
          client_update, agg, num_clients=K, clients_per_round=m, seed=seed,
          attack=attack)
      state = simulation.init_server_state(jax.tree.map(jnp.copy, params), agg,
                                           start_round=P)
      curve, selected, att_dist, hon_dist = [], [], [], []
      for _ in range(cfg['rounds']):
        if attack is None:
          state, rm = fn(state, clients)
        else:
          state, rm = fn(state, clients, attack_data)
        curve.append(float(attacks.target_accuracy(model.apply, state.params,
                                                   edge_test.x, edge_test.y)))
        if attack is not None and bool(rm.attack['active']):
          rep = np.asarray(rm.attack['replaced'])
          dist = np.asarray(rm.attack['distances'])
          att_dist.append(float(dist[rep].mean()))
          hon_dist.append(float(np.median(dist[~rep])))
          if any(k in rm.diagnostics for k in attacks.SELECTION_KEYS):  # Krum / Multi-Krum
            selected.append(bool(attacks.attacker_selected(rm.diagnostics, rep)))
      clean = float(metrics.accuracy(model.apply, state.params, test.x, test.y))
      row = {
          'attack': attack_name, 'defence': defence,
          'target_acc_final': curve[-1], 'target_acc_max': max(curve),
          'target_acc_mean_last10': float(np.mean(curve[-10:])),
          'clean_acc_final': clean,
          'attacker_dist': float(np.mean(att_dist)) if att_dist else float('nan'),
          'honest_dist_median': float(np.mean(hon_dist)) if hon_dist else float('nan'),
          'attacker_selected': (f'{sum(selected)}/{len(selected)}' if selected else ''),
          'seconds': time.time() - t0}
      results.append(row)
      with open(os.path.join(workdir, f'curve_{attack_name}_{defence}.json'), 'w') as f:
        json.dump({'target_acc': curve, **row}, f)
      _log(f"{attack_name:12s} vs {defence:17s} target final {row['target_acc_final']:.3f} "
           f"max {row['target_acc_max']:.3f} clean {clean:.4f} "
           f"dist att {row['attacker_dist']:.3f} / honest {row['honest_dist_median']:.3f} "
           f"sel {row['attacker_selected']}  {row['seconds']:.1f} s")

  # --- 4. the table -----------------------------------------------------------
  keys = list(results[0])
  with open(os.path.join(workdir, 'edge_case_results.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(results)
  lines = [
      f"# Edge-case backdoor on MNIST ({cfg['model']}, {K} clients, {m}/round, "
      f"attacker every {cfg['frequency']} rounds, {cfg['rounds']} rounds per cell)", '',
      f'Pre-trained model: clean {pre_clean:.4f}, target-task {pre_target:.4f} '
      f"({len(edge_test.y)} lowest-density test {src_c}s labelled {tgt}). "
      f'Total wall time {time.time() - t_start:.0f} s.', '',
      '| attack | defence | target acc (final) | target acc (max) | '
      'target acc (mean last 10) | clean acc | attacker dist | honest dist | '
      'attacker selected |',
      '|---|---|---|---|---|---|---|---|---|']
  for r in results:
    lines.append(
        f"| {r['attack']} | {r['defence']} | {r['target_acc_final']:.3f} | "
        f"{r['target_acc_max']:.3f} | {r['target_acc_mean_last10']:.3f} | "
        f"{r['clean_acc_final']:.4f} | {r['attacker_dist']:.3f} | "
        f"{r['honest_dist_median']:.3f} | {r['attacker_selected']} |")
  with open(os.path.join(workdir, 'edge_case_results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
