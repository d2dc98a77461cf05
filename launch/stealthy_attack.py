r"""The certified-FAT stealthy attacks against a trained FAT checkpoint.

Takes a ``launch.train`` workdir (an adversarially trained MNIST model, e.g.
``workdirs/mnist_fat``), pools the data of the malicious clients (175 of 500,
chosen with ``--config.pool_seed``) and lets the attacker craft, starting from the
global model:

* ``backdoor``: adversarial training plus a vertical-stripe trigger of L-inf
  magnitude ``--config.trigger_magnitude`` (MNIST 0.1) relabelled to ``--config.target``;
* ``distill``: a defensively distilled model at ``--config.temperature`` (MNIST 100);
* ``adaptive``: the distilled model refined against the defender's
  certification check (Section 4 of the paper): for each ``N`` in
  ``--config.adaptive_points`` the attacker fits the certified accuracy
  (``--config.adaptive_mode=certify``) or the mean certifiable loss (``match``) of
  the first ``N`` points of the defender's certification set at
  ``--config.adaptive_eps``, while keeping the distillation (the paper's Figure 1).
  Each model is also certified on those points and on the first
  ``--config.defender_points`` of the set.

Each crafted model is evaluated on the test set (clean accuracy, PGD accuracy
at ``--config.eps`` crafted at T = 1, PGD crafted at T = ``--temperature``, backdoor
success rate). With ``--config.fl_rounds > 0`` the attack is then injected into the
federation: rounds continue from the checkpoint with the run's aggregator
(median for ``mnist_fat``) and honest adversarially training clients, until
the activation rule fires (round >= checkpoint round and >= ``--config.min_malicious``
of the sampled clients malicious); all sampled malicious clients send the
crafted model, and the *global* model after that round is evaluated as well.

Settings live in ``launch/configs/stealthy_attack.py`` (presets ``''``,
``adaptive``, ``smoke``; every key overridable as ``--config.KEY=VALUE``).
Command::

  python -m launch.stealthy_attack --workdir=workdirs/mnist_fat \
      --out=workdirs/mnist_fat/stealthy
  python -m launch.stealthy_attack --workdir=workdirs/mnist_fat \
      --config=launch/configs/stealthy_attack.py:adaptive --config.adaptive_points=10,100

Writes ``stealthy.json`` and ``stealthy.md`` to ``--out``.
"""
import json
import os
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from launch.configs.stealthy_attack import ATTACKS

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'stealthy_attack.py')
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG,
                                          'Attack config file (with :preset).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'A launch.train workdir (checkpoint).',
                               required=True)
_OUT = flags.DEFINE_string('out', '', 'Output folder (default: WORKDIR/stealthy).')


def _choices(cfg):
  """The config's list-valued keys, checked: ``(attacks, adaptive_points)``."""
  attacks = [a.strip() for a in str(cfg.attacks).split(',') if a.strip()]
  bad = [a for a in attacks if a not in ATTACKS]
  if bad or not attacks:
    raise ValueError(f'attacks={cfg.attacks!r}: expected a comma-separated subset of {ATTACKS}')
  for key, allowed in (('stripe_sign', ('positive', 'alternating')),
                       ('distill_init', ('global', 'scratch')),
                       ('adaptive_mode', ('certify', 'match'))):
    if cfg[key] not in allowed:
      raise ValueError(f'{key}={cfg[key]!r}: expected one of {allowed}')
  points = [p.strip() for p in str(cfg.adaptive_points).split(',') if p.strip()]
  return attacks, points


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def _adaptive(sc, points, model, params, distilled, pooled, cert, evaluate, crafted,
              key):
  """The distilled model refined against the certification check, per N."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from fl_jax import attacks
  from fl_jax import certification
  from fl_jax import client
  # pylint: enable=g-import-not-at-top
  eps, chunk = sc.adaptive_eps, sc.cert_chunk
  nd = min(sc.defender_points, cert.x.shape[0])

  def cert_stats(p, n):
    r = certification.certify(model.apply, p, cert.x[:n], cert.y[:n], eps,
                              chunk_size=min(chunk, n))
    return (float(np.mean(np.asarray(r.certified & r.correct))),
            float(np.mean(np.asarray(r.loss))))

  n_ref = min(sc.refine_examples, pooled.x.shape[0])
  pick = np.random.default_rng(sc.seed).permutation(pooled.x.shape[0])[:n_ref]
  x, mask = np.asarray(pooled.x)[pick], np.ones(n_ref, bool)
  hp = client.LocalSGD(sc.refine_epochs, sc.batch_size, sc.refine_lr, 1.0,
                       sc.momentum, 0.0)
  results = {}
  for name, p in (('global', params), ('distill', distilled.student)):
    results[name + '_cert'] = dict(zip(
        (f'cert_acc@{eps:g}', f'cert_loss@{eps:g}'), cert_stats(p, nd)))
  plans = []
  for n_text in points:     # all checks before any refinement runs
    n = min(int(n_text), cert.x.shape[0])
    if n < 1:
      raise ValueError(f'adaptive_points must be >= 1, got {n_text!r}')
    objective = attacks.certification_objective(
        model.apply, cert.x[:n], cert.y[:n], eps, mode=sc.adaptive_mode,
        chunk_size=min(chunk, n))
    target = None
    if sc.adaptive_mode == 'match':
      target = float(objective.statistic(params))
      if target <= 0:
        raise ValueError(
            f'the global model certifies all {n} points at eps {eps:g} (mean '
            f'certifiable loss {target:g}); matching it means certifying them: '
            'use --adaptive_mode=certify')
    plans.append((n, objective, target))
  for n, objective, target in plans:
    t0 = time.time()
    refine = jax.jit(attacks.make_refiner(
        model.apply, objective, temperature=sc.temperature, refine_hp=hp,
        weight=sc.adaptive_weight))
    out = refine(distilled, x, mask, key, target)
    fit_acc, fit_loss = cert_stats(out.params, n)
    def_acc, def_loss = cert_stats(out.params, nd)
    name = f'adaptive_{sc.adaptive_mode}_{n}'
    crafted[name] = out.params
    results[name] = {
        **evaluate(out.params), 'craft_seconds': time.time() - t0,
        'objective_before': float(out.objective_before),
        'objective_after': float(out.objective_after),
        'target': target, f'fitted_cert_acc@{eps:g}': fit_acc,
        f'fitted_cert_loss@{eps:g}': fit_loss,
        f'cert_acc@{eps:g}': def_acc, f'cert_loss@{eps:g}': def_loss}
    _log(f'{name}: {results[name]}')
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  from fl_jax import attacks
  from fl_jax import client
  from fl_jax import metrics
  from fl_jax import simulation
  from fl_jax.metrics.writer import to_jsonable
  from fl_jax.simulation import train as train_lib
  from launch.configs import mnist_fedavg
  # pylint: enable=g-import-not-at-top

  t_start = time.time()
  sc = _CONFIG.value
  attack_list, points = _choices(sc)
  out_dir = _OUT.value or os.path.join(_WORKDIR.value, 'stealthy')
  os.makedirs(out_dir, exist_ok=True)
  model, params, cfg = train_lib.restore(_WORKDIR.value)
  cfg = {**mnist_fedavg.get_config().to_dict(), **cfg, 'init_checkpoint': ''}
  exp = train_lib.build_experiment(cfg)
  with np.load(os.path.join(_WORKDIR.value, train_lib.CHECKPOINT)) as z:
    ckpt_round = int(z['[0].round']) if '[0].round' in z.files else int(cfg['rounds'])
  _log(f"restored {cfg['model']} from {_WORKDIR.value} (round {ckpt_round}, "
       f"aggregator {cfg['aggregator']})")

  # The malicious clients' pooled data.
  mal = attacks.malicious_pool(cfg['num_clients'], sc.num_malicious, sc.pool_seed)
  cx, cy, cm = (np.asarray(a) for a in (exp.clients.x, exp.clients.y, exp.clients.mask))
  pooled = attacks.attacker_data(cx[mal][cm[mal]], cy[mal][cm[mal]])
  _log(f'attacker pools {pooled.x.shape[0]} examples of {int(mal.sum())} clients')

  test = exp.test
  n_eval = min(sc.eval_points, test.x.shape[0])
  ex, ey = test.x[:n_eval], test.y[:n_eval]
  trigger = attacks.stripe_trigger(model.input_shape, sc.trigger_magnitude,
                                   stripe_width=sc.stripe_width, sign=sc.stripe_sign)
  eval_key = jax.random.key(1234)

  def evaluate(p) -> dict:
    t0 = time.time()
    rep = attacks.distillation_report(model.apply, p, ex, ey, eval_key, eps=sc.eps,
                                      temperature=sc.temperature, steps=sc.pgd_steps)
    return {
        'clean_acc': float(metrics.accuracy(model.apply, p, test.x, test.y)),
        f'pgd_acc_T1@{sc.eps:g}': rep['pgd_defender'],
        f'pgd_acc_T{sc.temperature:g}@{sc.eps:g}': rep['pgd_attacker'],
        'backdoor_success': float(attacks.backdoor_success_rate(
            model.apply, p, test.x, test.y, trigger, sc.target)),
        'eval_seconds': time.time() - t0}

  results = {'global': evaluate(params)}
  _log(f"global model: {results['global']}")
  crafted = {}
  key = jax.random.key(sc.seed)
  if 'backdoor' in attack_list:
    t0 = time.time()
    hp = client.LocalSGD(sc.backdoor_epochs, sc.batch_size, sc.backdoor_lr, 1.0,
                         sc.momentum, 0.0)
    p, cmet = attacks.craft_backdoored_model(
        model.apply, params, pooled, jax.random.fold_in(key, 0), trigger=trigger,
        target=sc.target, hp=hp, poison_fraction=sc.poison_fraction,
        adv_fraction=sc.adv_fraction, eps=cfg['adv_eps'], steps=sc.adv_steps,
        step_size=sc.adv_step_size, warmup_epochs=sc.backdoor_warmup_epochs)
    crafted['backdoor'] = p
    results['backdoor'] = {**evaluate(p), 'craft_seconds': time.time() - t0,
                           'train_loss': float(cmet.train_loss)}
    _log(f"backdoored model: {results['backdoor']}")
  if 'distill' in attack_list or 'adaptive' in attack_list:
    t0 = time.time()
    thp = client.LocalSGD(sc.teacher_epochs, sc.batch_size, sc.distill_lr, 1.0,
                          sc.momentum, 0.0)
    shp = thp._replace(local_epochs=sc.student_epochs)
    init = None if sc.distill_init == 'global' else model.init(jax.random.fold_in(key, 2))
    out = attacks.craft_distilled_model(model.apply, params, pooled,
                                        jax.random.fold_in(key, 1), temperature=sc.temperature,
                                        teacher_hp=thp, student_hp=shp, init_params=init)
    if 'distill' in attack_list:      # (else only the adaptive models go in)
      crafted['distill'] = out.student
    results['distill'] = {**evaluate(out.student), 'craft_seconds': time.time() - t0,
                          'teacher_loss': float(out.teacher_loss),
                          'student_loss': float(out.student_loss)}
    _log(f"distilled student: {results['distill']}")
  if 'adaptive' in attack_list:
    results.update(_adaptive(sc, points, model, params, out, pooled, exp.cert, evaluate,
                             crafted, jax.random.fold_in(key, 3)))

  # Inject each crafted model into the federation.
  if sc.fl_rounds > 0:
    data = jax.device_put(exp.clients)
    participation = attacks.fixed_pool(cfg['num_clients'], sc.num_malicious,
                                       sc.pool_seed, start_round=ckpt_round,
                                       min_malicious=sc.min_malicious)
    attack = attacks.make_attack(participation, attacks.send_model_craft())
    fn = simulation.make_round_fn(
        exp.client_update, exp.aggregator, num_clients=cfg['num_clients'],
        clients_per_round=cfg['clients_per_round'], seed=cfg['seed'],
        client_parallel=cfg['client_parallel'] or None,
        chunk_size=cfg['chunk_size'] or None, attack=attack)
    for name, p_mal in crafted.items():
      t0 = time.time()
      state = simulation.init_server_state(jax.tree.map(jnp.copy, params),
                                           exp.aggregator, start_round=ckpt_round)
      fired = None
      for _ in range(sc.fl_rounds):
        state, rm = fn(state, data, p_mal)
        if bool(rm.attack['active']):
          fired = int(state.round) - 1
          break
      if fired is None:
        results[f'{name}_after_round'] = {'fired': False}
        _log(f'{name}: the attack did not fire in {sc.fl_rounds} rounds')
        continue
      dist = float(jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(
          jax.tree.leaves(state.params), jax.tree.leaves(p_mal)))))
      results[f'{name}_after_round'] = {
          **evaluate(state.params), 'fired_in_round': fired,
          'rounds_waited': fired - ckpt_round + 1,
          'num_malicious_sampled': int(rm.attack['num_malicious']),
          'distance_global_to_crafted': dist, 'seconds': time.time() - t0}
      _log(f"global after {name} round: {results[f'{name}_after_round']}")

  results['settings'] = {**sc.to_dict(), 'workdir': _WORKDIR.value, 'out': out_dir}
  results['settings'].update(pooled_examples=int(pooled.x.shape[0]),
                             checkpoint_round=ckpt_round,
                             aggregator=cfg['aggregator'],
                             wall_seconds=time.time() - t_start)
  with open(os.path.join(out_dir, 'stealthy.json'), 'w') as f:
    json.dump(to_jsonable(results), f, indent=2)
  eps, T = f'{sc.eps:g}', f'{sc.temperature:g}'
  lines = [f'# Stealthy attacks on {_WORKDIR.value} (round {ckpt_round})', '',
           f'| model | clean acc | PGD acc T=1 (eps {eps}) | PGD acc T={T} (eps {eps}) '
           f'| backdoor success |', '|---|---|---|---|---|']
  for name, r in results.items():
    if name == 'settings' or 'clean_acc' not in r:
      continue
    lines.append(f"| {name} | {r['clean_acc']:.4f} | {r[f'pgd_acc_T1@{eps}']:.4f} | "
                 f"{r[f'pgd_acc_T{T}@{eps}']:.4f} | {r['backdoor_success']:.4f} |")
  ad = [(k, r) for k, r in results.items()
        if isinstance(r, dict) and f'cert_acc@{sc.adaptive_eps:g}' in r]
  if ad:
    ce = f'{sc.adaptive_eps:g}'
    lines += ['', f'Certification at eps {ce} on the first {sc.defender_points} points of '
              'the defender\'s set (fitted: the points the adaptive attacker fits):', '',
              '| model | cert acc | mean cert loss | fitted cert acc | fitted cert loss |',
              '|---|---|---|---|---|']
    for k, r in ad:
      fa, fl = r.get(f'fitted_cert_acc@{ce}'), r.get(f'fitted_cert_loss@{ce}')
      lines.append(f"| {k.removesuffix('_cert')} | {r[f'cert_acc@{ce}']:.4f} | "
                   f"{r[f'cert_loss@{ce}']:.4g} | "
                   f"{'-' if fa is None else f'{fa:.4f}'} | "
                   f"{'-' if fl is None else f'{fl:.4g}'} |")
  lines += ['', f"PGD: {sc.pgd_steps} steps, first {n_eval} test points; clean and "
            f"backdoor success on all {test.x.shape[0]} test points. "
            f"Wall time {time.time() - t_start:.0f} s."]
  with open(os.path.join(out_dir, 'stealthy.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
