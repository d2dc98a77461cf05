"""The CIFAR-10 variant of the certified-FAT Table 1 experiment, end to end.

``launch.experiment`` runs ``launch/configs/table1_cifar10.py:smoke`` (Table 1
and the defended simulation) on CIFAR-10 served by ``tfds.testing.mock_data``
(random 32x32x3 images with the real feature specs; nothing is downloaded and
TensorFlow is not needed). The experiment runs once for the module
(``setUpClass``); the tests check what it wrote.

The smoke preset uses an MLP: DeepZono on the paper's ``cifar_cnn`` takes about
10 s per point and radius on a 2-core CPU, and the experiment certifies 8
models (Table 1) plus one per simulated round at 3 radii. ``ConfigTest`` checks
that the full config uses ``cifar_cnn`` on 32x32x3 inputs.
"""
import atexit
import csv
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from unittest import mock

from absl import flags
from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import attacks
from fl_jax import models
from fl_jax.simulation import train as train_lib
from launch import experiment
from launch.configs import cifar10_fat
from launch.configs import table1_cifar10

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / 'launch' / 'configs' / 'table1_cifar10.py'
NUM_EXAMPLES = 256            # mock examples per split (train and test)
PAPER_CERT_EPS = (1 / 255, 4 / 255, 8 / 255)
ROWS = ['before the round', 'PGD (no attack)', 'distilled', 'backdoor']


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return tfds


def _mock(tfds):
  return tfds.testing.mock_data(num_examples=NUM_EXAMPLES,
                                policy=tfds.testing.MockPolicy.USE_CODE)


class ConfigTest(absltest.TestCase):
  """The full configs carry the paper's CIFAR-10 settings (no data needed)."""

  def test_paper_settings(self):
    c = train_lib.config_to_dict(table1_cifar10.get_config())
    train_lib.validate_config(c)
    self.assertEqual((c['dataset'], c['model']), ('cifar10', 'cifar_cnn'))
    self.assertEqual((c['num_cert'], c['num_val']), (100, 5000))
    self.assertEqual((c['num_clients'], c['clients_per_round'], c['num_malicious'],
                      c['attack_min_malicious'], c['aggregator']),
                     (500, 5, 175, 3, 'median'))
    np.testing.assert_allclose(c['defender_cert_eps'], PAPER_CERT_EPS)
    np.testing.assert_allclose([c['adv_eps'], c['backdoor_magnitude'], c['distill_temperature']],
                               [8 / 255, 6 / 255, 25.0])
    self.assertLess(c['backdoor_magnitude'], c['adv_eps'])
    self.assertEqual((c['defender_cert_points'], c['table_cert_points']), (100, 100))
    self.assertEqual(c['table_attacks'], 'none,distillation,backdoor')
    self.assertEqual(c['init_checkpoint'], 'workdirs/cifar10_fat')
    # The paper's defender rule (the MNIST config widens it on measured noise).
    self.assertEqual((c['defender_acc_ratio'], c['defender_acc_atol'], c['defender_loss_tol'],
                      c['defender_loss_down_tol']), (0.9, 0.0, 0.1, None))
    fat = train_lib.config_to_dict(cifar10_fat.get_config())
    train_lib.validate_config(fat)
    for k in ('dataset', 'model', 'num_cert', 'num_val', 'adv_eps', 'adv_steps',
              'adv_step_size', 'adv_fraction', 'aggregator', 'num_clients', 'lr'):
      self.assertEqual(fat[k], c[k], k)  # Table 1 starts from this model.

  def test_full_model_takes_cifar_inputs(self):
    c = table1_cifar10.get_config()
    m = models.get_model(c.model, (32, 32, 3), 10)
    params = jax.eval_shape(m.init, jax.random.key(0))  # shapes only: no compilation
    logits = jax.eval_shape(m.apply, params, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    self.assertEqual(logits.shape, (2, 10))
    self.assertEqual(params['convs'][0]['kernel'].shape[-2:], (3, 32))  # RGB in, 32 maps out

  def test_smoke_keeps_the_cifar_settings(self):
    full = train_lib.config_to_dict(table1_cifar10.get_config())
    smoke = train_lib.config_to_dict(table1_cifar10.get_config('smoke'))
    train_lib.validate_config(smoke)
    for k in ('dataset', 'adv_eps', 'backdoor_magnitude', 'distill_temperature',
              'defender_cert_eps', 'aggregator', 'table_attacks', 'sim_attack'):
      self.assertEqual(smoke[k], full[k], k)
    self.assertEqual(smoke['init_checkpoint'], '')

  def test_unknown_preset(self):
    with self.assertRaisesRegex(ValueError, 'nope'):
      table1_cifar10.get_config('nope')
    with self.assertRaisesRegex(ValueError, 'nope'):
      cifar10_fat.get_config('nope')


_RUN = {}   # the experiment's outputs, once per process


def _run_smoke_experiment(tfds):
  """Runs the smoke experiment once per process (xdist may tear the class down
  between two of its tests and set it up again; this keeps that cheap)."""
  if _RUN:
    return _RUN
  tmp = tempfile.mkdtemp()
  atexit.register(shutil.rmtree, tmp, ignore_errors=True)
  workdir = os.path.join(tmp, 'table1_cifar10')
  data_dir = os.path.join(tmp, 'data')  # empty: TFDS (mocked) serves the data
  os.makedirs(data_dir)
  argv = ['experiment', f'--config={CONFIG}:smoke', f'--config.data_dir={data_dir}',
          f'--workdir={workdir}', '--mode=all']
  fl = flags.FLAGS
  was_parsed = fl.is_parsed()
  try:
    # config_flags reads the --config.KEY overrides from sys.argv.
    with _mock(tfds), mock.patch.object(sys, 'argv', argv):
      fl(argv)
      cfg = train_lib.config_to_dict(experiment._CONFIG.value)  # pylint: disable=protected-access
      experiment.main([])
      exp = train_lib.build_experiment(cfg)  # what the run saw (no compilation)
  finally:
    if was_parsed:
      for name in ('config', 'workdir', 'mode'):
        fl[name].unparse()
    else:
      fl.unparse_flags()
  with open(os.path.join(workdir, 'table1.csv'), newline='') as f:
    reader = csv.DictReader(f)
    columns, rows = reader.fieldnames, list(reader)
  _RUN.update(workdir=workdir, cfg=cfg, exp=exp, columns=columns, rows=rows)
  return _RUN


class CifarSmokeExperimentTest(absltest.TestCase):
  """``python -m launch.experiment --config=...table1_cifar10.py:smoke`` on mock CIFAR-10.

  One test method with a sub-test per property: pytest-xdist would otherwise
  hand the methods to different workers, each running the experiment.
  """

  def test_end_to_end(self):
    for name in ('ran_on_cifar10_inputs', 'table1_files', 'table1_figures_in_range',
                 'table1_decisions', 'simulation_counts'):
      with self.subTest(name):
        getattr(self, f'check_{name}')()

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tfds = _tfds()
    if cls.tfds is None:
      raise absltest.SkipTest('tensorflow-datasets is not installed')
    for k, v in _run_smoke_experiment(cls.tfds).items():
      setattr(cls, k, v)

  def check_ran_on_cifar10_inputs(self):
    cfg, exp = self.cfg, self.exp
    self.assertEqual(cfg['dataset'], 'cifar10')
    self.assertEqual(exp.model.input_shape, (32, 32, 3))
    self.assertEqual(exp.test.x.shape, (NUM_EXAMPLES, 32, 32, 3))
    self.assertEqual(exp.cert.x.shape, (cfg['num_cert'], 32, 32, 3))
    self.assertEqual(exp.val.x.shape, (cfg['num_val'], 32, 32, 3))
    self.assertEqual(exp.clients.x.shape[0], cfg['num_clients'])
    self.assertEqual(exp.clients.x.shape[2:], (32, 32, 3))
    self.assertEqual(int(np.asarray(exp.clients.mask).sum()), cfg['client_pool_size'])
    with open(os.path.join(self.workdir, 'config.json')) as f:
      self.assertEqual(json.load(f)['dataset'], 'cifar10')
    # The trained models: a first layer on 32 * 32 * 3 = 3072 inputs.
    for mode in ('on', 'off'):
      sub = os.path.join(self.workdir, f'sim_defender_{mode}')
      model, params, rcfg = train_lib.restore(sub)
      self.assertEqual((rcfg['dataset'], model.input_shape), ('cifar10', (32, 32, 3)))
      kernels = [l.shape for l in jax.tree.leaves(params) if l.ndim == 2]
      self.assertIn(3072, [s[0] for s in kernels])
      self.assertEqual(model.apply(params, exp.test.x[:2]).shape, (2, 10))

  def check_table1_files(self):
    cfg = self.cfg
    e = f"{cfg['adv_eps']:g}"
    expected = ['model', 'clean_accuracy', f'pgd_accuracy@{e}', f'temp_pgd_accuracy@{e}',
                'backdoor_success']
    for r in PAPER_CERT_EPS:
      expected += [f'certified_accuracy@{r:g}', f'certifiable_loss@{r:g}']
    expected += ['accepted', 'reason', 'seconds']
    self.assertEqual(self.columns, expected)
    self.assertEqual([r['model'] for r in self.rows], ROWS)  # one per attack + reference
    with open(os.path.join(self.workdir, 'table1.md')) as f:
      md = f.read().strip().splitlines()
    self.assertLen(md, 2 + len(ROWS))
    self.assertEqual(md[0], '| ' + ' | '.join(expected) + ' |')
    for line, name in zip(md[2:], ROWS):
      self.assertTrue(line.startswith(f'| {name} |'), line)
      self.assertLen(line.strip('|').split(' | '), len(expected))

  def check_table1_figures_in_range(self):
    cfg = self.cfg
    nc = cfg['table_cert_points']
    for row in self.rows:
      for col in self.columns:
        if col in ('model', 'accepted', 'reason'):
          continue
        v = float(row[col])
        self.assertTrue(math.isfinite(v), (row['model'], col, v))
        if 'accuracy' in col or col == 'backdoor_success':
          self.assertBetween(v, 0.0, 1.0)
        else:  # certifiable losses (Eq. 3) and seconds
          self.assertGreaterEqual(v, 0.0, (row['model'], col))
      # Clean accuracy over the whole mock test split, certified accuracy
      # over the table_cert_points certification points.
      n_test = float(row['clean_accuracy']) * NUM_EXAMPLES
      self.assertAlmostEqual(n_test, round(n_test), places=3)
      for r in PAPER_CERT_EPS:
        k = float(row[f'certified_accuracy@{r:g}']) * nc
        self.assertAlmostEqual(k, round(k), places=4)

  def check_table1_decisions(self):
    ref, *attacked = self.rows
    self.assertEqual((ref['accepted'], ref['reason']), ('', 'reference'))
    for row in attacked:
      self.assertIn(row['accepted'], ('True', 'False'))
      if row['accepted'] == 'True':
        self.assertEqual(row['reason'], 'accepted')
      else:
        self.assertTrue(row['reason'].startswith('rejected: '), row['reason'])
        failed = row['reason'][len('rejected: '):].split(', ')
        self.assertTrue(set(failed) <= set(self.columns), failed)  # the checked figures
    # The defender certifies the same points as the table (deterministically),
    # so its certified verdicts can be recomputed from the CSV with the rule.
    cfg = self.cfg
    self.assertEqual(cfg['defender_cert_points'], cfg['table_cert_points'])
    down = cfg['defender_loss_down_tol']
    down = cfg['defender_loss_tol'] if down is None else down
    for row in attacked:
      failed = set() if row['accepted'] == 'True' else set(
          row['reason'][len('rejected: '):].split(', '))
      for r in PAPER_CERT_EPS:
        acc_k, loss_k = f'certified_accuracy@{r:g}', f'certifiable_loss@{r:g}'
        acc, acc_ref = float(row[acc_k]), float(ref[acc_k])
        acc_ok = acc >= cfg['defender_acc_ratio'] * acc_ref - cfg['defender_acc_atol']
        loss, loss_ref = float(row[loss_k]), float(ref[loss_k])
        delta = loss - loss_ref
        band = lambda tol: tol * abs(loss_ref) + cfg['defender_loss_atol']
        loss_ok = -band(down) <= delta <= band(cfg['defender_loss_tol'])
        for k, ok in ((acc_k, acc_ok), (loss_k, loss_ok)):
          margin = (min(abs(delta - band(cfg['defender_loss_tol'])), abs(delta + band(down)))
                    if k == loss_k else 1.0)
          if margin > 1e-4 * max(1.0, abs(loss_ref)):   # not on the boundary
            self.assertEqual(k not in failed, ok, (row['model'], k, row[k], ref[k]))

  def check_simulation_counts(self):
    cfg = self.cfg
    with open(os.path.join(self.workdir, 'simulation.json')) as f:
      res = json.load(f)
    self.assertEqual(sorted(res), ['off', 'on'])
    is_mal = attacks.malicious_pool(cfg['num_clients'], cfg['num_malicious'],
                                    cfg['malicious_seed'])
    e = f"{cfg['adv_eps']:g}"
    for mode, r in res.items():
      self.assertEqual(r['rounds'], cfg['sim_rounds'])
      self.assertBetween(r['attacked_rounds'], 0, r['rounds'])
      fin = r['final']
      self.assertEqual((fin['round'], fin['rounds']), (cfg['sim_rounds'], cfg['sim_rounds']))
      for k in ('test_accuracy', f'pgd_accuracy@{e}', f'temp_pgd_accuracy@{e}'):
        self.assertBetween(fin[k], 0.0, 1.0)
      self.assertTrue(math.isfinite(fin['train_loss']))
      sub = os.path.join(self.workdir, f'sim_defender_{mode}')
      with open(os.path.join(sub, 'rounds.jsonl')) as f:
        recs = [json.loads(l) for l in f]
      self.assertEqual([x['round'] for x in recs], list(range(1, cfg['sim_rounds'] + 1)))
      for x in recs:  # per-round training figures
        self.assertTrue(math.isfinite(x['train_loss']) and x['train_loss'] >= 0, x)
        self.assertTrue(math.isfinite(x['aggregate_norm']) and x['aggregate_norm'] >= 0, x)
      for x in recs:  # the activation rule: >= attack_min_malicious sampled
        self.assertLen(set(x['client_ids']), cfg['clients_per_round'])
        n_mal = int(is_mal[x['client_ids']].sum())
        self.assertEqual(x['attack/num_malicious'], n_mal)
        self.assertEqual(x['attack/active'], n_mal >= cfg['attack_min_malicious'])
      attacked = [x for x in recs if x['attack/active']]
      self.assertEqual(r['attacked_rounds'], len(attacked))
      if mode == 'on':
        honest = [x for x in recs if not x['attack/active']]
        self.assertEqual(r['attacked_rounds'] + r['honest_rounds'], r['rounds'])
        self.assertEqual(r['honest_rounds'], len(honest))
        self.assertBetween(r['attacked_rounds_accepted'], 0, r['attacked_rounds'])
        self.assertBetween(r['honest_rounds_rejected'], 0, r['honest_rounds'])
        self.assertEqual(r['attacked_rounds_accepted'],
                         sum(x['defender/accept'] for x in attacked))
        self.assertEqual(r['honest_rounds_rejected'],
                         sum(not x['defender/accept'] for x in honest))
        for x in recs:  # the defender certified at the paper's CIFAR-10 radii
          for rad in PAPER_CERT_EPS:
            self.assertGreaterEqual(x[f'defender/certifiable_loss@{rad:g}'], 0.0)
            self.assertBetween(x[f'defender/certified_accuracy@{rad:g}'], 0.0, 1.0)
          self.assertEqual(x['defender/reason'] == 'accepted', x['defender/accept'])
      else:
        self.assertNotIn('attacked_rounds_accepted', r)
        self.assertFalse(any(k.startswith('defender/') for x in recs for k in x))
    with open(os.path.join(self.workdir, 'simulation.md')) as f:
      lines = f.read().strip().splitlines()
    self.assertLen(lines, 4)  # header, separator, on, off
    self.assertTrue(os.path.getsize(os.path.join(self.workdir, 'defender_metrics.png')) > 0)


if __name__ == '__main__':
  absltest.main()
