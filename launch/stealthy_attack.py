r"""The certified-FAT stealthy attacks against a trained FAT checkpoint.

Takes a ``launch.train`` workdir (an adversarially trained MNIST model, e.g.
``workdirs/mnist_fat``), pools the data of the malicious clients (175 of 500,
chosen with ``--pool_seed``) and lets the attacker craft, starting from the
global model:

* ``backdoor``: adversarial training plus a vertical-stripe trigger of L-inf
  magnitude ``--trigger_magnitude`` (MNIST 0.1) relabelled to ``--target``;
* ``distill``: a defensively distilled model at ``--temperature`` (MNIST 100);
* ``adaptive``: the distilled model refined against the defender's
  certification check (Section 4 of the paper): for each ``N`` in
  ``--adaptive_points`` the attacker fits the certified accuracy
  (``--adaptive_mode=certify``) or the mean certifiable loss (``match``) of
  the first ``N`` points of the defender's certification set at
  ``--adaptive_eps``, while keeping the distillation (the paper's Figure 1).
  Each model is also certified on those points and on the first
  ``--defender_points`` of the set.

Each crafted model is evaluated on the test set (clean accuracy, PGD accuracy
at ``--eps`` crafted at T = 1, PGD crafted at T = ``--temperature``, backdoor
success rate). With ``--fl_rounds > 0`` the attack is then injected into the
federation: rounds continue from the checkpoint with the run's aggregator
(median for ``mnist_fat``) and honest adversarially training clients, until
the activation rule fires (round >= checkpoint round and >= ``--min_malicious``
of the sampled clients malicious); all sampled malicious clients send the
crafted model, and the *global* model after that round is evaluated as well.

Command::

  python -m launch.stealthy_attack --workdir=workdirs/mnist_fat \
      --out=workdirs/mnist_fat/stealthy

Writes ``stealthy.json`` and ``stealthy.md`` to ``--out``.
"""
import json
import os
import sys
import time

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'A launch.train workdir (checkpoint).',
                               required=True)
_OUT = flags.DEFINE_string('out', '', 'Output folder (default: WORKDIR/stealthy).')
_ATTACKS = flags.DEFINE_list('attacks', ['backdoor', 'distill'],
                             'Attacks to craft: backdoor, distill, adaptive.')
_NUM_MAL = flags.DEFINE_integer('num_malicious', 175, 'Malicious clients.')
_POOL_SEED = flags.DEFINE_integer('pool_seed', 0, 'Seed of the malicious pool.')
_SEED = flags.DEFINE_integer('seed', 0, "Attacker's training seed.")
# Backdoor.
_MAG = flags.DEFINE_float('trigger_magnitude', 0.1, 'L-inf magnitude of the stripes.')
_WIDTH = flags.DEFINE_integer('stripe_width', 1, 'Pixel columns per stripe.')
_SIGN = flags.DEFINE_enum('stripe_sign', 'alternating', ['positive', 'alternating'],
                          'Stripe pattern (+b/-b columns; +b/0 for positive).')
_TARGET = flags.DEFINE_integer('target', 0, 'Backdoor target class.')
_POISON = flags.DEFINE_float('poison_fraction', 0.25, 'Triggered share of each batch.')
_ADV_FRAC = flags.DEFINE_float('adv_fraction', 0.1, 'PGD share of each batch.')
_BD_EPOCHS = flags.DEFINE_integer('backdoor_epochs', 2, 'Joint (trigger + PGD) epochs.')
_BD_WARMUP = flags.DEFINE_integer('backdoor_warmup_epochs', 1,
                                  'Poisoning-only epochs before the joint ones.')
_BD_LR = flags.DEFINE_float('backdoor_lr', 0.01, 'Backdoor training learning rate.')
_ADV_STEPS = flags.DEFINE_integer('adv_steps', 7, 'PGD steps in adversarial training.')
_ADV_STEP = flags.DEFINE_float('adv_step_size', 0.07, 'PGD step in adversarial training.')
# Distillation.
_T = flags.DEFINE_float('temperature', 100.0, 'Distillation temperature.')
_TEACHER_EPOCHS = flags.DEFINE_integer('teacher_epochs', 5, 'Teacher epochs.')
_STUDENT_EPOCHS = flags.DEFINE_integer('student_epochs', 5, 'Student epochs.')
_D_LR = flags.DEFINE_float('distill_lr', 0.1, 'Teacher / student learning rate.')
_D_INIT = flags.DEFINE_enum('distill_init', 'global', ['global', 'scratch'],
                            'Start teacher and student from the global model or afresh.')
# Adaptive attack (refinement of the distilled model).
_AD_POINTS = flags.DEFINE_list('adaptive_points', ['10', '100'],
                               'Certification points the attacker fits.')
_AD_MODE = flags.DEFINE_enum('adaptive_mode', 'certify', ['certify', 'match'],
                             'Certify the points, or match the global model\'s '
                             'mean certifiable loss on them.')
_AD_EPS = flags.DEFINE_float('adaptive_eps', 0.1, 'Certification radius.')
_AD_WEIGHT = flags.DEFINE_float('adaptive_weight', 1.0, 'Weight of the penalty.')
_AD_EPOCHS = flags.DEFINE_integer('refine_epochs', 1, 'Refinement epochs.')
_AD_LR = flags.DEFINE_float('refine_lr', 0.01, 'Refinement learning rate.')
_AD_EXAMPLES = flags.DEFINE_integer('refine_examples', 2048,
                                    'Pooled examples used by the refinement.')
_DEF_POINTS = flags.DEFINE_integer('defender_points', 200,
                                   'Certification points checked per model.')
_CERT_CHUNK = flags.DEFINE_integer('cert_chunk', 50, 'Points per certification chunk.')
_BATCH = flags.DEFINE_integer('batch_size', 64, "Attacker's batch size.")
_MOMENTUM = flags.DEFINE_float('momentum', 0.9, "Attacker's momentum.")
# Evaluation and federation.
_EPS = flags.DEFINE_float('eps', 0.25, 'PGD radius of the evaluation.')
_PGD_STEPS = flags.DEFINE_integer('pgd_steps', 20, 'PGD steps of the evaluation.')
_EVAL_POINTS = flags.DEFINE_integer('eval_points', 1000, 'Test points for PGD.')
_FL_ROUNDS = flags.DEFINE_integer('fl_rounds', 40, 'Max rounds to wait for the '
                                  'attack to fire (0 = do not inject).')
_MIN_MAL = flags.DEFINE_integer('min_malicious', 3, 'Malicious clients needed in a round.')


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def _adaptive(model, params, distilled, pooled, cert, evaluate, crafted, key):
  """The distilled model refined against the certification check, per N."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from fl_jax import attacks
  from fl_jax import certification
  from fl_jax import client
  # pylint: enable=g-import-not-at-top
  eps, chunk = _AD_EPS.value, _CERT_CHUNK.value
  nd = min(_DEF_POINTS.value, cert.x.shape[0])

  def cert_stats(p, n):
    r = certification.certify(model.apply, p, cert.x[:n], cert.y[:n], eps,
                              chunk_size=min(chunk, n))
    return (float(np.mean(np.asarray(r.certified & r.correct))),
            float(np.mean(np.asarray(r.loss))))

  n_ref = min(_AD_EXAMPLES.value, pooled.x.shape[0])
  pick = np.random.default_rng(_SEED.value).permutation(pooled.x.shape[0])[:n_ref]
  x, mask = np.asarray(pooled.x)[pick], np.ones(n_ref, bool)
  hp = client.LocalSGD(_AD_EPOCHS.value, _BATCH.value, _AD_LR.value, 1.0,
                       _MOMENTUM.value, 0.0)
  results = {}
  for name, p in (('global', params), ('distill', distilled.student)):
    results[name + '_cert'] = dict(zip(
        (f'cert_acc@{eps:g}', f'cert_loss@{eps:g}'), cert_stats(p, nd)))
  plans = []
  for n_text in _AD_POINTS.value:     # all checks before any refinement runs
    n = min(int(n_text), cert.x.shape[0])
    if n < 1:
      raise ValueError(f'adaptive_points must be >= 1, got {n_text!r}')
    objective = attacks.certification_objective(
        model.apply, cert.x[:n], cert.y[:n], eps, mode=_AD_MODE.value,
        chunk_size=min(chunk, n))
    target = None
    if _AD_MODE.value == 'match':
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
        model.apply, objective, temperature=_T.value, refine_hp=hp,
        weight=_AD_WEIGHT.value))
    out = refine(distilled, x, mask, key, target)
    fit_acc, fit_loss = cert_stats(out.params, n)
    def_acc, def_loss = cert_stats(out.params, nd)
    name = f'adaptive_{_AD_MODE.value}_{n}'
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
  mal = attacks.malicious_pool(cfg['num_clients'], _NUM_MAL.value, _POOL_SEED.value)
  cx, cy, cm = (np.asarray(a) for a in (exp.clients.x, exp.clients.y, exp.clients.mask))
  pooled = attacks.attacker_data(cx[mal][cm[mal]], cy[mal][cm[mal]])
  _log(f'attacker pools {pooled.x.shape[0]} examples of {int(mal.sum())} clients')

  test = exp.test
  n_eval = min(_EVAL_POINTS.value, test.x.shape[0])
  ex, ey = test.x[:n_eval], test.y[:n_eval]
  trigger = attacks.stripe_trigger(model.input_shape, _MAG.value,
                                   stripe_width=_WIDTH.value, sign=_SIGN.value)
  eval_key = jax.random.key(1234)

  def evaluate(p) -> dict:
    t0 = time.time()
    rep = attacks.distillation_report(model.apply, p, ex, ey, eval_key, eps=_EPS.value,
                                      temperature=_T.value, steps=_PGD_STEPS.value)
    return {
        'clean_acc': float(metrics.accuracy(model.apply, p, test.x, test.y)),
        f'pgd_acc_T1@{_EPS.value:g}': rep['pgd_defender'],
        f'pgd_acc_T{_T.value:g}@{_EPS.value:g}': rep['pgd_attacker'],
        'backdoor_success': float(attacks.backdoor_success_rate(
            model.apply, p, test.x, test.y, trigger, _TARGET.value)),
        'eval_seconds': time.time() - t0}

  results = {'global': evaluate(params)}
  _log(f"global model: {results['global']}")
  crafted = {}
  key = jax.random.key(_SEED.value)
  if 'backdoor' in _ATTACKS.value:
    t0 = time.time()
    hp = client.LocalSGD(_BD_EPOCHS.value, _BATCH.value, _BD_LR.value, 1.0,
                         _MOMENTUM.value, 0.0)
    p, cmet = attacks.craft_backdoored_model(
        model.apply, params, pooled, jax.random.fold_in(key, 0), trigger=trigger,
        target=_TARGET.value, hp=hp, poison_fraction=_POISON.value,
        adv_fraction=_ADV_FRAC.value, eps=cfg['adv_eps'], steps=_ADV_STEPS.value,
        step_size=_ADV_STEP.value, warmup_epochs=_BD_WARMUP.value)
    crafted['backdoor'] = p
    results['backdoor'] = {**evaluate(p), 'craft_seconds': time.time() - t0,
                           'train_loss': float(cmet.train_loss)}
    _log(f"backdoored model: {results['backdoor']}")
  if 'distill' in _ATTACKS.value or 'adaptive' in _ATTACKS.value:
    t0 = time.time()
    thp = client.LocalSGD(_TEACHER_EPOCHS.value, _BATCH.value, _D_LR.value, 1.0,
                          _MOMENTUM.value, 0.0)
    shp = thp._replace(local_epochs=_STUDENT_EPOCHS.value)
    init = None if _D_INIT.value == 'global' else model.init(jax.random.fold_in(key, 2))
    out = attacks.craft_distilled_model(model.apply, params, pooled,
                                        jax.random.fold_in(key, 1), temperature=_T.value,
                                        teacher_hp=thp, student_hp=shp, init_params=init)
    if 'distill' in _ATTACKS.value:      # (else only the adaptive models go in)
      crafted['distill'] = out.student
    results['distill'] = {**evaluate(out.student), 'craft_seconds': time.time() - t0,
                          'teacher_loss': float(out.teacher_loss),
                          'student_loss': float(out.student_loss)}
    _log(f"distilled student: {results['distill']}")
  if 'adaptive' in _ATTACKS.value:
    results.update(_adaptive(model, params, out, pooled, exp.cert, evaluate,
                             crafted, jax.random.fold_in(key, 3)))

  # Inject each crafted model into the federation.
  if _FL_ROUNDS.value > 0:
    data = jax.device_put(exp.clients)
    participation = attacks.fixed_pool(cfg['num_clients'], _NUM_MAL.value,
                                       _POOL_SEED.value, start_round=ckpt_round,
                                       min_malicious=_MIN_MAL.value)
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
      for _ in range(_FL_ROUNDS.value):
        state, rm = fn(state, data, p_mal)
        if bool(rm.attack['active']):
          fired = int(state.round) - 1
          break
      if fired is None:
        results[f'{name}_after_round'] = {'fired': False}
        _log(f'{name}: the attack did not fire in {_FL_ROUNDS.value} rounds')
        continue
      dist = float(jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(
          jax.tree.leaves(state.params), jax.tree.leaves(p_mal)))))
      results[f'{name}_after_round'] = {
          **evaluate(state.params), 'fired_in_round': fired,
          'rounds_waited': fired - ckpt_round + 1,
          'num_malicious_sampled': int(rm.attack['num_malicious']),
          'distance_global_to_crafted': dist, 'seconds': time.time() - t0}
      _log(f"global after {name} round: {results[f'{name}_after_round']}")

  results['settings'] = {k: v.value for k, v in globals().items()
                         if isinstance(v, flags.FlagHolder)}
  results['settings'].update(pooled_examples=int(pooled.x.shape[0]),
                             checkpoint_round=ckpt_round,
                             aggregator=cfg['aggregator'],
                             wall_seconds=time.time() - t_start)
  with open(os.path.join(out_dir, 'stealthy.json'), 'w') as f:
    json.dump(to_jsonable(results), f, indent=2)
  eps, T = f'{_EPS.value:g}', f'{_T.value:g}'
  lines = [f'# Stealthy attacks on {_WORKDIR.value} (round {ckpt_round})', '',
           f'| model | clean acc | PGD acc T=1 (eps {eps}) | PGD acc T={T} (eps {eps}) '
           f'| backdoor success |', '|---|---|---|---|---|']
  for name, r in results.items():
    if name == 'settings' or 'clean_acc' not in r:
      continue
    lines.append(f"| {name} | {r['clean_acc']:.4f} | {r[f'pgd_acc_T1@{eps}']:.4f} | "
                 f"{r[f'pgd_acc_T{T}@{eps}']:.4f} | {r['backdoor_success']:.4f} |")
  ad = [(k, r) for k, r in results.items()
        if isinstance(r, dict) and f'cert_acc@{_AD_EPS.value:g}' in r]
  if ad:
    ce = f'{_AD_EPS.value:g}'
    lines += ['', f'Certification at eps {ce} on the first {_DEF_POINTS.value} points of '
              'the defender\'s set (fitted: the points the adaptive attacker fits):', '',
              '| model | cert acc | mean cert loss | fitted cert acc | fitted cert loss |',
              '|---|---|---|---|---|']
    for k, r in ad:
      fa, fl = r.get(f'fitted_cert_acc@{ce}'), r.get(f'fitted_cert_loss@{ce}')
      lines.append(f"| {k.removesuffix('_cert')} | {r[f'cert_acc@{ce}']:.4f} | "
                   f"{r[f'cert_loss@{ce}']:.4g} | "
                   f"{'-' if fa is None else f'{fa:.4f}'} | "
                   f"{'-' if fl is None else f'{fl:.4g}'} |")
  lines += ['', f"PGD: {_PGD_STEPS.value} steps, first {n_eval} test points; clean and "
            f"backdoor success on all {test.x.shape[0]} test points. "
            f"Wall time {time.time() - t_start:.0f} s."]
  with open(os.path.join(out_dir, 'stealthy.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
