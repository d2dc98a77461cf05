"""Vectorized batches of runs: batched == alone, independence, no retrace, resume, errors."""
import json
import os
import shutil
import tempfile

from absl.testing import absltest
import jax
import numpy as np

from fl_jax import metrics as metrics_lib

from fl_jax.simulation import batch as batch_lib
from fl_jax.simulation import train as train_lib
from launch import sweep_lib
from launch.configs import mnist_fedavg


def smoke(base=None, **kw):
  cfg = mnist_fedavg.get_config('smoke').to_dict()
  cfg.update(rounds=4, eval_every=2, checkpoint_every=2)
  cfg.update(base or {})
  cfg.update(kw)
  return cfg


# Backdoor attacker + certified defender + DP + adversarial training + a
# Dirichlet partition: every stage of the round is in the program.
ATTACKED = dict(
    attack='backdoor', num_malicious=6, attack_min_malicious=1, backdoor_warmup_epochs=0,
    defender=True, defender_val_points=50, defender_cert_points=10,
    defender_checks='clean,pgd,cert_loss', defender_pgd_steps=2, adv_train=True,
    adv_steps=2, adv_fraction=0.5, dp_sigma=1e-3, partition='dirichlet', rounds=2,
    eval_every=2, eval_pgd_eps=(0.1,), eval_pgd_steps=2, eval_pgd_points=50)


def leaves(workdir):
  _, params, _ = train_lib.restore(workdir)
  return jax.tree.leaves(params)


def read(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class BatchTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir)

  def run_batch(self, configs, tag, **kw):
    dirs = [os.path.join(self.dir, f'{tag}{i}') for i in range(len(configs))]
    out = batch_lib.run_batch(configs, dirs, batch_dir=os.path.join(self.dir, tag + '_b'),
                              log=lambda m: None, **kw)
    return dirs, out

  def assert_same_run(self, dir_a, dir_b, rtol=2e-5, atol=2e-6):
    for a, b in zip(leaves(dir_a), leaves(dir_b)):
      np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    for name in ('metrics.jsonl', 'rounds.jsonl'):
      pa, pb = os.path.join(dir_a, name), os.path.join(dir_b, name)
      self.assertEqual(os.path.exists(pa), os.path.exists(pb), name)
      if not os.path.exists(pa):
        continue
      ra, rb = read(pa), read(pb)
      self.assertLen(ra, len(rb))
      for x, y in zip(ra, rb):
        keys = set(y) - {'elapsed_seconds', 'rounds_per_second'}
        self.assertEqual(set(x) - {'elapsed_seconds', 'rounds_per_second'}, keys)
        for k in keys:
          if isinstance(y[k], float):
            np.testing.assert_allclose(x[k], y[k], rtol=rtol, atol=atol, err_msg=k)
          else:
            self.assertEqual(x[k], y[k], k)

  def test_each_run_equals_the_run_alone(self):
    configs = [smoke(seed=0, lr=0.05, norm_bound=0.1, momentum=0.9),
               smoke(seed=1, lr=0.1, norm_bound=1.0, momentum=0.5),
               smoke(seed=2, lr=0.02, norm_bound=0.3, momentum=0.0, weight_decay=1e-3)]
    dirs, summaries = self.run_batch(configs, 'b', runs_chunk=3)   # one vmap over the runs
    for i, cfg in enumerate(configs):
      alone = os.path.join(self.dir, f'alone{i}')
      s = train_lib.train(cfg, alone, log=lambda m: None)
      self.assert_same_run(dirs[i], alone)
      self.assertAlmostEqual(summaries[i]['test_accuracy'], s['test_accuracy'], places=5)
    # Runs really differ (the settings reach the program).
    self.assertNotAlmostEqual(summaries[0]['train_loss'], summaries[1]['train_loss'], places=3)

  def test_attacked_defended_runs_with_their_own_data_equal_the_runs_alone(self):
    configs = [smoke(ATTACKED, seed=0, data_seed=0, attack_lr=0.05, adv_eps=0.1,
                     defender_loss_tol=0.1),
               smoke(ATTACKED, seed=1, data_seed=1, attack_lr=0.1, adv_eps=0.2,
                     defender_loss_tol=0.5, dp_sigma=2e-3)]
    batch = batch_lib.build_batch(configs)
    self.assertEqual(batch.data_axis, 0)   # a partition per run
    self.assertIn('attack_lr', batch.traced)
    dirs, _ = self.run_batch(configs, 'a', runs_chunk=2)
    for i, cfg in enumerate(configs):
      alone = os.path.join(self.dir, f'alone{i}')
      train_lib.train(cfg, alone, log=lambda m: None)
      self.assert_same_run(dirs[i], alone, rtol=1e-4, atol=1e-5)
    rows = read(os.path.join(dirs[1], 'rounds.jsonl'))
    self.assertIn('defender/pgd_accuracy@0.2', rows[0])   # named as a run alone names it
    # Each run of the batch writes TensorBoard events beside metrics.jsonl, as a run alone does.
    for d in dirs:
      tb = metrics_lib.read_scalars(d)
      self.assertEqual([s for s, _ in tb['test_accuracy']],
                       [r['round'] for r in read(os.path.join(d, 'metrics.jsonl'))])

  def test_runs_chunk_does_not_change_the_result(self):
    # 3 runs: one vmap, lax.map over unbatched runs, chunks of 2 (with a remainder).
    configs = [smoke(seed=s, lr=0.05 * (s + 1), norm_bound=0.5, rounds=2) for s in range(3)]
    ref, _ = self.run_batch(configs, 'v', runs_chunk=3)
    for chunk in (1, 2):
      dirs, _ = self.run_batch(configs, f'c{chunk}_', runs_chunk=chunk)
      for a, b in zip(dirs, ref):
        self.assert_same_run(a, b)
    with self.assertRaisesRegex(ValueError, 'runs_chunk must be >= 1, got -1'):
      self.run_batch(configs, 'bad', runs_chunk=-1)

  def test_runs_are_independent(self):
    configs = [smoke(seed=0, norm_bound=1.0), smoke(seed=1, lr=0.1, norm_bound=1.0),
               smoke(seed=2, norm_bound=1.0)]
    dirs, _ = self.run_batch(configs, 'x')
    changed = [configs[0], dict(configs[1], lr=0.2, norm_bound=0.5), configs[2]]
    dirs2, _ = self.run_batch(changed, 'y')
    for i in (0, 2):
      for a, b in zip(leaves(dirs[i]), leaves(dirs2[i])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(dirs[1]), leaves(dirs2[1])))
    self.assertGreater(diff, 1e-4)

  def test_no_recompilation_after_the_first_block(self):
    configs = [smoke(seed=s, rounds=6) for s in range(3)]
    batch = batch_lib.build_batch(configs)
    settings = {k: jax.numpy.asarray(v) for k, v in batch.settings.items()}
    state = batch_lib.make_init_fn(batch)(settings, batch.defender_data, None)
    block = batch_lib.make_block_fn(batch, evals_per_block=1)
    for _ in range(3):
      state, recs, evals = block(state, settings, batch.clients, batch.attack_data,
                                 batch.defender_data, batch.test.x, batch.test.y)
    self.assertEqual(block.num_traces(), 1)
    np.testing.assert_array_equal(np.asarray(state.round), [6, 6, 6])
    self.assertEqual(recs['train_loss'].shape, (3, 1, 2))   # [R, S, E]
    self.assertEqual(evals['test_accuracy'].shape, (3, 1))

  def test_rounds_past_the_end_leave_the_state_unchanged(self):
    # 5 rounds with eval_every 2: the last segment runs one real round.
    configs = [smoke(seed=s, rounds=5) for s in range(2)]
    dirs, summaries = self.run_batch(configs, 'p')
    self.assertEqual([s['rounds'] for s in summaries], [5, 5])
    alone = os.path.join(self.dir, 'alone')
    train_lib.train(configs[1], alone, log=lambda m: None)
    self.assert_same_run(dirs[1], alone)

  def test_killed_and_resumed_batch_ends_with_the_uninterrupted_result(self):
    configs = [smoke(seed=s, rounds=6, norm_bound=0.2 * (s + 1)) for s in range(2)]
    full, _ = self.run_batch(configs, 'f', evals_per_block=1)

    class Killed(Exception):
      pass

    def die(msg):
      if 'round' in msg:
        raise Killed(msg)

    dirs = [os.path.join(self.dir, f'k{i}') for i in range(2)]
    with self.assertRaises(Killed):
      batch_lib.run_batch(configs, dirs, batch_dir=os.path.join(self.dir, 'k_b'),
                          evals_per_block=1, log=die)
    self.assertLen(read(os.path.join(dirs[0], 'metrics.jsonl')), 1)
    batch_lib.run_batch(configs, dirs, batch_dir=os.path.join(self.dir, 'k_b'),
                        evals_per_block=1, resume=True, log=lambda m: None)
    for a, b in zip(full, dirs):
      self.assert_same_run(a, b, rtol=0, atol=0)


class BadInputTest(absltest.TestCase):

  def test_shape_changing_key_in_one_batch_names_it(self):
    with self.assertRaisesRegex(ValueError, r"'clients_per_round'.*clients_per_round=4.*"
                                r'clients_per_round=5'):
      batch_lib.check_batch([smoke(), smoke(clients_per_round=5)])
    with self.assertRaisesRegex(ValueError, "'norm_bound'.*on in some runs"):
      batch_lib.check_batch([smoke(norm_bound=0.0), smoke(norm_bound=1.0)])

  def test_a_bad_value_in_one_run_is_named(self):
    with self.assertRaisesRegex(ValueError, 'lr must be > 0'):
      batch_lib.build_batch([smoke(), smoke(lr=-0.1)])

  def test_grouping(self):
    configs = [smoke(seed=0), smoke(seed=1), smoke(aggregator='median'), smoke(norm_bound=1.0),
               smoke(norm_bound=2.0, seed=3)]
    self.assertEqual(batch_lib.group_runs(configs), [[0, 1], [2], [3, 4]])

  def test_sweep_file_errors(self):
    with self.assertRaisesRegex(ValueError, r"\{'a': 2, 'b': 1\}"):
      sweep_lib.zipped(a=[1, 2], b=[3])
    base = mnist_fedavg.get_config('smoke')
    with self.assertRaisesRegex(ValueError, r"'norm_boud'.*did you mean \['norm_bound'\]"):
      sweep_lib.apply_overrides(base, {'norm_boud': 1.0})
    with self.assertRaisesRegex(ValueError, "clients_per_round='five'"):
      sweep_lib.apply_overrides(base, {'clients_per_round': 'five'})

  def test_summary_over_seeds_by_hand(self):
    results = [{'overrides': {'norm_bound': 1.0, 'seed': s}, 'final': {'acc': a}}
               for s, a in ((0, 0.5), (1, 0.7))]
    results.append({'overrides': {'norm_bound': 2.0, 'seed': 0}, 'final': {'acc': 0.9}})
    table = sweep_lib.summarize(results, 'acc')
    self.assertEqual(list(table), ['norm_bound=1.0', 'norm_bound=2.0'])
    self.assertAlmostEqual(table['norm_bound=1.0']['mean'], 0.6)
    self.assertAlmostEqual(table['norm_bound=1.0']['std'], 0.1)
    self.assertEqual(table['norm_bound=2.0']['n'], 1)


class SweepLaunchTest(absltest.TestCase):

  def test_two_groups_end_to_end(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir)
    runs = sweep_lib.product(aggregator=['mean', 'median'], seed=[0, 1])
    base = mnist_fedavg.get_config('smoke')
    base.rounds, base.eval_every = 2, 2
    configs, names, groups = sweep_lib.plan(base, runs)
    self.assertEqual(groups, [[0, 1], [2, 3]])
    summaries = [None] * 4
    for g, idx in enumerate(groups):
      out = batch_lib.run_batch([configs[i] for i in idx],
                                [os.path.join(workdir, names[i]) for i in idx],
                                batch_dir=os.path.join(workdir, '_b', str(g)), log=lambda m: None)
      for i, s in zip(idx, out):
        summaries[i] = s
    group_of = {i: g for g, idx in enumerate(groups) for i in idx}
    results, table = sweep_lib.write_results(workdir, runs, names, group_of, summaries,
                                                'test_accuracy')
    self.assertEqual(list(table), ['aggregator=mean', 'aggregator=median'])
    lines = read(os.path.join(workdir, 'sweep_results.jsonl'))
    self.assertEqual([l['overrides'] for l in lines], runs)
    self.assertTrue(os.path.exists(os.path.join(workdir, 'sweep_summary.png')))
    for n in names:
      for f in ('config.json', 'metrics.jsonl', 'summary.json', 'checkpoint.npz'):
        self.assertTrue(os.path.exists(os.path.join(workdir, n, f)), (n, f))


if __name__ == '__main__':
  absltest.main()
