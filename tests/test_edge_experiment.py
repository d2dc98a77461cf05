"""Edge-case backdoors in the experiment engine: data, schedule, batches, figures."""
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
import jax
import numpy as np

from fl_jax import data as data_lib
from fl_jax.simulation import batch as batch_lib
from fl_jax.simulation import edge_task
from fl_jax.simulation import train as train_lib
from launch import figures_lib
from launch import sweep_lib
from launch.configs import edge_case as edge_config
from launch.sweeps import edge_case as edge_figures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke(**kw):
  cfg = edge_config.get_config('smoke').to_dict()
  cfg.update(kw)
  return cfg


def read(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class EdgeTaskTest(absltest.TestCase):

  def test_attacker_data_and_target_task(self):
    cfg = smoke(edge_num_train=15, edge_num_clean=25)
    d = train_lib.load_data(cfg)
    e = d.edge
    self.assertEqual(e.attack_x.shape, (40, 28, 28, 1))
    self.assertEqual(int(e.attack_is_edge.sum()), 15)
    np.testing.assert_array_equal(e.attack_y[e.attack_is_edge], 1)  # edge 7s labelled 1
    self.assertTrue(np.all(e.target_y == 1))
    self.assertEqual(e.target_x.shape[0], 40)   # edge_num_test
    self.assertEqual(e.honest_y.size, 0)         # p = 1: no honest edge examples
    # The UCI edge set is not in the MNIST pool: no attacker edge image equals a client image.
    flat = np.asarray(d.clients.x).reshape(-1, 784)
    for img in e.attack_x[e.attack_is_edge][:3].reshape(-1, 784):
      self.assertFalse(np.any(np.all(flat == img, axis=1)))

  def test_honest_share_goes_to_honest_clients_with_true_labels(self):
    for p, honest in ((0.5, 20), (0.25, 60)):
      cfg = smoke(edge_attacker_share=p, edge_num_train=20)
      base = train_lib.load_data(smoke())
      d = train_lib.load_data(cfg)
      self.assertEqual(d.edge.honest_y.size, honest)
      self.assertTrue(np.all(d.edge.honest_y == 7))
      self.assertEqual(int(d.edge.attack_is_edge.sum()), 20)  # D' is the same for every p
      extra = np.asarray(d.clients.num_examples) - np.asarray(base.clients.num_examples)
      self.assertEqual(int(extra.sum()), honest)
      np.testing.assert_array_equal(np.bincount(d.edge.honest_clients, minlength=20), extra)
      mal = train_lib.malicious_mask(cfg)
      self.assertEqual(int(extra[mal].sum()), 0)                   # never the attacker
      self.assertLessEqual(extra[~mal].max() - extra[~mal].min(), 1)   # round-robin
      # The appended images are the honest edge images, labelled 7, behind the client's own.
      k = int(np.flatnonzero(extra)[0])
      n0 = int(base.clients.num_examples[k])
      got = np.asarray(d.clients.x)[k, n0:n0 + extra[k]]
      self.assertTrue(all(np.any(np.all(d.edge.honest_x.reshape(-1, 784) == g.reshape(784),
                                        axis=1)) for g in got))
      np.testing.assert_array_equal(np.asarray(d.clients.y)[k, n0:n0 + extra[k]], 7)
      self.assertTrue(np.asarray(d.clients.mask)[k, :n0 + extra[k]].all())

  def test_in_distribution_source_removes_its_digits_from_the_pool(self):
    d = train_lib.load_data(smoke(edge_source='mnist'))
    self.assertIn('in-distribution', d.edge.description)
    flat = np.asarray(d.clients.x)[np.asarray(d.clients.mask)].reshape(-1, 784)
    img = d.edge.attack_x[d.edge.attack_is_edge][0].reshape(784)
    self.assertFalse(np.any(np.all(flat == img, axis=1)))
    # Only the chosen 7s leave the honest clients (20 for D'); the other 7s stay.
    base = train_lib.load_data(smoke(edge_source='uci_digits'))
    sevens = lambda c: int(np.sum((np.asarray(c.y) == 7) & np.asarray(c.mask)))
    self.assertEqual(sevens(base.clients) - sevens(d.clients), 20)
    with self.assertRaisesRegex(ValueError, 'edge_target=10 is not a class'):
      train_lib.load_data(smoke(edge_target=10))
    with self.assertRaisesRegex(ValueError, 'edge_num_test=500 exceeds'):
      train_lib.load_data(smoke(edge_num_test=500))

  def test_add_to_clients_by_hand(self):
    c = data_lib.ClientData(np.zeros((3, 2, 1, 1, 1), np.float32), np.zeros((3, 2), np.int32),
                            np.array([[1, 0], [1, 1], [0, 0]], bool), np.array([1, 2, 0]))
    x = np.arange(1, 5, dtype=np.float32).reshape(4, 1, 1, 1)
    out, owner = edge_task.add_to_clients(c, x, np.full(4, 7), [0, 2], seed=0)
    self.assertEqual(sorted(owner.tolist()), [0, 0, 2, 2])
    np.testing.assert_array_equal(out.num_examples, [3, 2, 2])
    self.assertEqual(out.x.shape[1], 3)
    got = sorted(np.asarray(out.x)[0, 1:3].ravel().tolist() +
                 np.asarray(out.x)[2, 0:2].ravel().tolist())
    self.assertEqual(got, [1, 2, 3, 4])
    np.testing.assert_array_equal(out.mask[1], [True, True, False])

  def test_bad_values_name_themselves(self):
    cases = {'edge_attacker_share': (0.0, 'edge_attacker_share'),
             'edge_source': ('svhn', 'svhn'), 'edge_target': (7, 'edge_target')}
    for key, (value, needle) in cases.items():
      with self.assertRaisesRegex(ValueError, needle):
        train_lib.validate_config(smoke(**{key: value}))
    with self.assertRaisesRegex(ValueError, r'needs 660 edge examples .* has 134'):
      train_lib.load_data(smoke(edge_attacker_share=0.1, edge_num_train=66))
    with self.assertRaisesRegex(ValueError, 'attack_schedule'):
      train_lib.validate_config(smoke(attack_schedule='sometimes'))
    with self.assertRaisesRegex(ValueError, 'model_width'):
      train_lib.build_model(smoke(model='mnist_cnn', model_width=2.0), (28, 28, 1), 10)


class EdgeRunTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir)

  def test_fixed_frequency_attacks_exactly_every_f_rounds(self):
    w = os.path.join(self.dir, 'run')
    s = train_lib.train(smoke(attack='edge_pgd', rounds=6, attack_frequency=3, eval_every=3),
                        w, log=lambda m: None)
    self.assertIn('target_accuracy', s)
    rows = read(os.path.join(w, 'rounds.jsonl'))
    active = [r['round'] for r in rows if r['attack/active']]
    self.assertEqual(active, [3, 6])   # rounds F, 2F (1-based, as rounds.jsonl counts)
    for r in rows:
      if r['attack/active']:   # the PGD attacker stays in its ball
        self.assertLessEqual(r['attack/crafted_norm'], 1.5 * 0.998 ** (r['round'] - 1) + 1e-4)
    self.assertTrue(all(len(r['client_ids']) == 5 for r in rows))

  def test_fairness_metrics_and_krum_selections(self):
    w = os.path.join(self.dir, 'fair')
    cfg = smoke(aggregator='krum', attack_frequency=1, rounds=2, eval_every=2,
                edge_attacker_share=0.5, edge_honest_clients=1, eval_ap_ratio=True)
    s = train_lib.train(cfg, w, log=lambda m: None)
    self.assertBetween(s['ap_ratio'], 0.0, 1.0)
    self.assertLessEqual(s['client_accuracy_min'], s['test_accuracy'] + 0.5)
    self.assertIn('honest_edge_accuracy', s)
    d = train_lib.load_data(cfg)
    self.assertLen(set(d.edge.honest_clients.tolist()), 1)     # one edge holder
    rows = read(os.path.join(w, 'rounds.jsonl'))
    for r in rows:   # Krum selects one of the m sampled clients; the flag agrees with it
      self.assertEqual(sum(r['selected']), 1)
      self.assertIn(r['attack/selected'], (True, False))
    with self.assertRaisesRegex(ValueError, 'edge_honest_clients'):
      train_lib.load_data(smoke(edge_attacker_share=0.5, edge_honest_clients=99))

  def test_batched_edge_runs_equal_runs_alone(self):
    # PGD radius and attack frequency traced per run; seeds and partitions per run;
    # honest clients holding edge examples (their accuracy on them is evaluated).
    cfgs = [smoke(attack='edge_pgd', rounds=4, pgd_delta=d, attack_frequency=f, seed=s,
                  data_seed=s, edge_attacker_share=0.5)
            for d, f, s in ((1.5, 2, 0), (0.5, 1, 1))]
    dirs = [os.path.join(self.dir, f'b{i}') for i in range(2)]
    batch_lib.run_batch(cfgs, dirs, batch_dir=os.path.join(self.dir, 'bb'), log=lambda m: None)
    for i, cfg in enumerate(cfgs):
      alone = os.path.join(self.dir, f'a{i}')
      train_lib.train(cfg, alone, log=lambda m: None)
      _, pa, _ = train_lib.restore(alone)
      _, pb, _ = train_lib.restore(dirs[i])
      for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
      ma, mb = read(os.path.join(alone, 'metrics.jsonl')), read(os.path.join(dirs[i],
                                                                               'metrics.jsonl'))
      for ra, rb in zip(ma, mb):
        self.assertAlmostEqual(ra['target_accuracy'], rb['target_accuracy'], places=5)
        self.assertAlmostEqual(ra['honest_edge_accuracy'], rb['honest_edge_accuracy'],
                               places=5)
      norms_a = [r['attack/crafted_norm'] for r in read(os.path.join(alone, 'rounds.jsonl'))]
      norms_b = [r['attack/crafted_norm'] for r in read(os.path.join(dirs[i], 'rounds.jsonl'))]
      np.testing.assert_allclose(norms_a, norms_b, rtol=1e-4, atol=1e-6)


class FigureTest(absltest.TestCase):

  def test_every_figure_plans_on_the_paper_preset(self):
    base = edge_config.get_config('')
    for name in edge_figures.FIGURES:
      runs, labels = edge_figures.with_seeds(edge_figures.figure_settings(name), 3)
      self.assertEqual(len(runs), 3 * len(set(labels)))
      configs, _, groups = sweep_lib.plan(base, runs)
      for cfg in configs:   # every run's round builds with its values
        train_lib.validate_config(cfg)
        model = train_lib.build_model(cfg, (28, 28, 1), 10)
        train_lib.build_round(cfg, model, None, None, jit=False)
      # Seeds of a setting share one program.
      for g in groups:
        self.assertEqual(len({labels[i] for i in g}), len(g) // 3 if len(g) >= 3 else 1)
    with self.assertRaisesRegex(ValueError, 'unknown figure'):
      edge_figures.figure_settings('figure99')

  def test_curves_csv_and_summary_by_hand(self):
    d = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, d)
    wds = []
    for s, vals in enumerate(((0.2, 0.6), (0.4, 0.8))):
      w = os.path.join(d, f'r{s}')
      os.makedirs(w)
      with open(os.path.join(w, 'metrics.jsonl'), 'w') as f:
        for r, v in zip((10, 20), vals):
          f.write(json.dumps({'round': r, 'target_accuracy': v, 'test_accuracy': 0.9}) + '\n')
      wds.append(w)
    rows = figures_lib.write_curves(os.path.join(d, 'c.csv'), 'fig', ['a', 'a'],
                                    [{'seed': 0}, {'seed': 1}], wds)
    self.assertLen(rows, 4)
    with open(os.path.join(d, 'c.csv')) as f:
      self.assertLen(list(csv.DictReader(f)), 4)
    (row,) = figures_lib.summary(rows)
    self.assertAlmostEqual(row['target_acc_final'], 0.7)
    self.assertAlmostEqual(row['target_acc_final_min'], 0.6)
    self.assertAlmostEqual(row['target_acc_peak'], 0.7)
    figures_lib.plot(os.path.join(d, 'c.png'), rows, 'fig')
    self.assertGreater(os.path.getsize(os.path.join(d, 'c.png')), 1000)

  def test_figure_commands_write_csv_and_png(self):
    d = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, d)
    for fig in ('capacity', 'density'):
      out = subprocess.run(
          [sys.executable, '-m', 'launch.edge_figures', f'--figure={fig}', '--seeds=1',
           f'--config={REPO}/launch/configs/edge_case.py:smoke', f'--workdir={d}',
           '--config.rounds=2', '--config.eval_every=2'],
          cwd=REPO, capture_output=True, text=True, timeout=600)
      self.assertEqual(out.returncode, 0, out.stderr[-3000:])
      files = ('density.csv', 'density.png') if fig == 'density' else (
          'curves.csv', 'curves.png', 'summary.csv', 'summary.md')
      for name in files:
        self.assertTrue(os.path.exists(os.path.join(d, fig, name)), (fig, name))
    with open(os.path.join(d, 'capacity', 'curves.csv')) as f:
      settings = {r['setting'] for r in csv.DictReader(f)}
    self.assertEqual(settings, {'k = 0.5', 'k = 1', 'k = 2'})
    self.assertLen(os.listdir(os.path.join(d, '_pretrain')), 3)   # one model per width


if __name__ == '__main__':
  absltest.main()
