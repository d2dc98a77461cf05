"""Server round: FedAvg by hand, vmap == loop, replay, no retrace, resume."""
import errno
import json
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

import fl_test_utils

from fl_jax import aggregators
from fl_jax import client
from fl_jax import data as data_lib
from fl_jax import metrics as metrics_lib
from fl_jax import models
from fl_jax import simulation
from fl_jax.adversarial import standard_loss
from fl_jax.simulation import checkpoint
from fl_jax.simulation import train as train_lib
from launch.configs import mnist_fedavg


tiny_clients = fl_test_utils.tiny_clients


class RoundTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.model = models.get_model('mlp', (4, 4, 1), 3, hidden=(8,))
    self.params = self.model.init(jax.random.key(0))
    hp = client.LocalSGD(local_epochs=2, batch_size=4, lr=0.1, momentum=0.9)
    self.client_update = client.make_client_update(standard_loss(self.model.apply), hp)
    self.data = tiny_clients()

  def test_fedavg_against_hand_weighted_mean(self):
    # A client update whose result is known: w_i = w + mean of its real x.
    fake_update = fl_test_utils.shift_update
    agg = aggregators.weighted_mean()
    fn = simulation.make_round_fn(fake_update, agg, num_clients=6, clients_per_round=6,
                                  seed=0)
    state = simulation.init_server_state(jax.tree.map(jnp.copy, self.params), agg)
    new_state, rm = fn(state, self.data)  # donates state
    x = np.asarray(self.data.x).reshape(6, 10, -1).mean(-1)
    mask = np.asarray(self.data.mask)
    n = mask.sum(1)
    shifts = (x * mask).sum(1) / n
    expected_shift = np.sum(n * shifts) / n.sum()
    for new, old in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(self.params)):
      np.testing.assert_allclose(new - old, expected_shift, rtol=1e-5)
    self.assertEqual(int(new_state.round), 1)
    self.assertCountEqual(np.asarray(rm.client_ids).tolist(), range(6))

  @parameterized.parameters(('vmap', None), ('map', None), ('map', 2))
  def test_parallel_round_equals_python_loop(self, mode, chunk):
    agg = aggregators.weighted_mean()
    fn = simulation.make_round_fn(self.client_update, agg, num_clients=6,
                                  clients_per_round=3, seed=3, client_parallel=mode,
                                  chunk_size=chunk)
    state = simulation.init_server_state(jax.tree.map(jnp.copy, self.params), agg,
                                         start_round=5)
    new_state, rm = fn(state, self.data)
    # The same round by hand: same keys, a Python loop over the sampled clients.
    sample_key, train_key, _, _ = simulation.round_keys(jax.random.key(3), 5)
    ids = np.asarray(simulation.sample_clients(sample_key, 6, 3))
    np.testing.assert_array_equal(ids, rm.client_ids)
    cu = jax.jit(self.client_update)
    news, ns = [], []
    for i in ids:
      new, m = cu(self.params, client.ClientBatch(self.data.x[i], self.data.y[i]),
                  self.data.mask[i], jax.random.fold_in(train_key, int(i)), 5)
      news.append(new)
      ns.append(int(m.num_examples))
    w = np.array(ns, np.float64) / sum(ns)
    for k, leaf in enumerate(jax.tree.leaves(new_state.params)):
      per = [jax.tree.leaves(nw)[k] for nw in news]
      old = jax.tree.leaves(self.params)[k]
      expected = old + sum(wi * (p - old) for wi, p in zip(w, per))
      np.testing.assert_allclose(leaf, expected, rtol=2e-5, atol=2e-6)

  def test_replay_and_no_retrace(self):
    agg = aggregators.weighted_mean()
    raw = simulation.make_round_fn(self.client_update, agg, num_clients=6,
                                   clients_per_round=2, seed=1, jit=False)
    fn = jax.jit(chex.assert_max_traces(raw, n=1))
    state = simulation.init_server_state(self.params, agg)
    s1, m1 = fn(state, self.data)
    s2, m2 = fn(s1, self.data)
    s3, _ = fn(s2, self.data)  # a third call must not trace again
    # Replay round 1 from the state that preceded it.
    s2b, m2b = fn(s1, self.data)
    np.testing.assert_array_equal(m2.client_ids, m2b.client_ids)
    for a, b in zip(jax.tree.leaves(s2.params), jax.tree.leaves(s2b.params)):
      np.testing.assert_array_equal(a, b)
    self.assertEqual(int(s3.round), 3)

  def test_attack_hook_rewrites_rows_and_can_force_sampling(self):
    # Clients 0 and 1 are malicious; the attack forces them into the sample and
    # replaces their updates by a constant c; with FedAvg the aggregate is then
    # known by hand from the honest rows.
    c = 0.25
    def sample(key, round_idx):
      del key, round_idx
      return jnp.array([0, 1, 4], jnp.int32)
    def apply(params, updates, weights, ids, key, round_idx, attack_data):
      del params, key, round_idx
      bad = attack_data[ids]
      upd = jax.tree.map(lambda u: jnp.where(bad.reshape((-1,) + (1,) * (u.ndim - 1)), c, u),
                         updates)
      return upd, weights, {'num_malicious': jnp.sum(bad)}
    agg = aggregators.weighted_mean()
    raw = simulation.make_round_fn(self.client_update, agg, num_clients=6,
                                   clients_per_round=3, seed=0,
                                   attack=simulation.Attack(sample, apply), jit=False)
    malicious = jnp.array([True, True, False, False, False, False])
    state = simulation.init_server_state(self.params, agg)
    new_state, rm = jax.jit(raw)(state, self.data, malicious)
    np.testing.assert_array_equal(rm.client_ids, [0, 1, 4])
    self.assertEqual(int(rm.attack['num_malicious']), 2)
    # Honest row: client 4 trained as usual with the same key.
    _, train_key, _, _ = simulation.round_keys(jax.random.key(0), 0)
    honest, _ = jax.jit(self.client_update)(
        self.params, client.ClientBatch(self.data.x[4], self.data.y[4]), self.data.mask[4],
        jax.random.fold_in(train_key, 4), 0)
    n = np.asarray(self.data.num_examples)[[0, 1, 4]].astype(np.float64)
    w = n / n.sum()
    for new, old, h in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(self.params),
                           jax.tree.leaves(honest)):
      expected = old + (w[0] + w[1]) * c + w[2] * (h - old)
      np.testing.assert_allclose(new, expected, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(rm.update_norms[:2], c * np.sqrt(sum(
        l.size for l in jax.tree.leaves(self.params))), rtol=1e-5)

  @parameterized.parameters(
      (dict(clients_per_round=7), 'clients_per_round'),
      (dict(num_clients=0), 'num_clients'),
      (dict(client_parallel='pmap'), 'pmap'),
      (dict(chunk_size=0), 'chunk_size'))
  def test_bad_input(self, override, msg):
    kwargs = dict(num_clients=6, clients_per_round=2, seed=0)
    kwargs.update(override)
    with self.assertRaisesRegex(ValueError, msg):
      simulation.make_round_fn(self.client_update, aggregators.weighted_mean(), **kwargs)


class CheckpointTest(absltest.TestCase):

  def test_round_trip_with_typed_key(self):
    tree = {'a': jnp.arange(3.0), 'k': jax.random.key(7), 'n': (jnp.int32(4),)}
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, 'c.npz')
      checkpoint.save(path, tree)
      back = checkpoint.load(path, tree)
      np.testing.assert_array_equal(back['a'], tree['a'])
      np.testing.assert_array_equal(jax.random.key_data(back['k']),
                                    jax.random.key_data(tree['k']))
      with self.assertRaisesRegex(ValueError, 'shape'):
        checkpoint.load(path, {**tree, 'a': jnp.zeros(4)})

  def test_torn_or_foreign_checkpoint_says_what_to_do(self):
    tree = {'a': jnp.arange(1000.0), 'k': jax.random.key(7)}
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, 'c.npz')
      checkpoint.save(path, tree)
      raw = open(path, 'rb').read()
      for name, content in (('torn', raw[:len(raw) // 2]), ('empty', b''),
                            ('flipped', raw[:200] + bytes(100) + raw[300:]),
                            ('foreign', b'not a checkpoint at all')):
        with self.subTest(name):
          with open(path, 'wb') as f:
            f.write(content)
          with self.assertRaisesRegex(checkpoint.CheckpointCorruptError,
                                      f'checkpoint {path} is corrupt.*delete it.*start over'):
            checkpoint.load(path, tree)

  def test_failed_save_leaves_no_partial_file_and_keeps_the_old_one(self):
    tree = {'a': jnp.arange(3.0)}
    real_savez = np.savez
    def full_disk(f, **arrays):
      f.write(b'PK partial')
      raise OSError(errno.ENOSPC, 'No space left on device')
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, 'c.npz')
      checkpoint.save(path, tree)
      with mock.patch.object(checkpoint.np, 'savez', full_disk):
        with self.assertRaisesRegex(OSError, f'{path}.*disk is full.*previous checkpoint is kept'):
          checkpoint.save(path, {'a': jnp.arange(3.0) + 1})
      self.assertEqual(os.listdir(d), ['c.npz'])   # no partial .tmp.npz left behind
      np.testing.assert_array_equal(checkpoint.load(path, tree)['a'], [0., 1., 2.])
      self.assertIs(checkpoint.np.savez, real_savez)
      checkpoint.save(path, {'a': jnp.arange(3.0) + 1})   # the next save works
      np.testing.assert_array_equal(checkpoint.load(path, tree)['a'], [1., 2., 3.])


class TrainDriverTest(absltest.TestCase):

  def smoke_config(self, **kw):
    c = mnist_fedavg.get_config('smoke')
    c.client_pool_size = 400
    for k, v in kw.items():
      c[k] = v
    return c

  def test_resume_after_interrupt_gives_identical_params(self):
    class Killed(Exception):
      """The simulated death of the training process."""
    real_save = checkpoint.save
    def save_then_kill(path, tree):   # the process dies right after round 2's checkpoint
      real_save(path, tree)
      if int(tree[0].round) == 2:
        raise Killed
    read = lambda w: [json.loads(l) for l in open(os.path.join(w, 'metrics.jsonl'))]
    quiet = lambda m: None
    with tempfile.TemporaryDirectory() as d:
      full, part = os.path.join(d, 'full'), os.path.join(d, 'part')
      lines = []
      # eval_every 3, checkpoints every 2: rounds 1-2 are not yet logged at the kill.
      s_full = train_lib.train(self.smoke_config(rounds=4, eval_every=3), full,
                               log=lines.append)
      with mock.patch.object(train_lib.ckpt_lib, 'save', save_then_kill):
        with self.assertRaises(Killed):
          train_lib.train(self.smoke_config(rounds=6, eval_every=3), part, log=quiet)
      # rounds is a key a resume may change.
      s_res = train_lib.train(self.smoke_config(rounds=4, eval_every=3), part, resume=True,
                              log=quiet)
      _, p_full, _ = train_lib.restore(full)
      _, p_res, cfg = train_lib.restore(part)
      for a, b in zip(jax.tree.leaves(p_full), jax.tree.leaves(p_res)):
        np.testing.assert_array_equal(a, b)
      self.assertEqual(s_full['test_accuracy'], s_res['test_accuracy'])
      self.assertEqual(cfg['rounds'], 4)
      rows, full_rows = read(part), read(full)
      self.assertEqual([r['round'] for r in rows], [3, 4])
      for key in ('round', 'test_accuracy', 'train_loss', 'elapsed_seconds'):
        self.assertIn(key, rows[-1])
      # The first row after the resume averages rounds 1-3, as the uninterrupted run does.
      self.assertEqual([r['train_loss'] for r in rows], [r['train_loss'] for r in full_rows])
      summary = json.load(open(os.path.join(part, 'summary.json')))
      self.assertEqual(summary['rounds'], 4)
      # One progress line per evaluation, with the speed and the time left.
      self.assertLen(lines, 2)
      self.assertRegex(lines[0], r'^round +3/4 +test_acc=0\.\d{4} +train_loss=\d+\.\d{4} .*'
                                 r'\d+\.\d\d rounds/s +ETA \d+:\d\d$')
      # TensorBoard events beside metrics.jsonl hold the same scalars.
      for workdir, jrows in ((full, full_rows), (part, rows)):
        events = metrics_lib.read_scalars(workdir)
        for tag in ('test_accuracy', 'train_loss', 'rounds_per_second'):
          self.assertEqual([s for s, _ in events[tag]], [3, 4], (workdir, tag))
          np.testing.assert_allclose([v for _, v in events[tag]], [r[tag] for r in jrows],
                                     rtol=1e-6)
      try:   # TensorBoard's own reader, where it is installed
        from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
      except ImportError:
        event_accumulator = None
      if event_accumulator is not None:
        acc = event_accumulator.EventAccumulator(full)
        acc.Reload()
        self.assertEqual([(e.step, e.value) for e in acc.Scalars('test_accuracy')],
                         metrics_lib.read_scalars(full)['test_accuracy'])
      # Resuming the finished run runs nothing and keeps its summary's metrics.
      train_lib.train(self.smoke_config(rounds=4, eval_every=3), part, resume=True, log=quiet)
      again = json.load(open(os.path.join(part, 'summary.json')))
      for key in ('test_accuracy', 'train_loss', 'update_norm_mean', 'aggregate_norm', 'round'):
        self.assertEqual(again[key], summary[key], key)
      # A changed config is refused with the keys that differ; fewer rounds too.
      with self.assertRaisesRegex(ValueError, r"differs .* in \['lr', 'seed'\] \(lr: 0.05 -> "
                                              r'0.1, seed: 0 -> 5\).*--resume_allow=lr,seed'):
        train_lib.train(self.smoke_config(rounds=4, lr=0.1, seed=5), part, resume=True,
                        log=quiet)
      with self.assertRaisesRegex(ValueError, r"resume_allow names keys \['lrr'\]"):
        train_lib.train(self.smoke_config(rounds=4, lr=0.1), part, resume=True, log=quiet,
                        resume_allow=('lrr',))
      with self.assertRaisesRegex(ValueError, 'rounds=3 is fewer than the 4 rounds'):
        train_lib.train(self.smoke_config(rounds=3), part, resume=True, log=quiet)
      self.assertEqual(json.load(open(os.path.join(part, 'config.json')))['lr'], 0.05)
      train_lib.train(self.smoke_config(rounds=4, lr=0.1), part, resume=True, log=quiet,
                      resume_allow=('lr',))
      self.assertEqual(json.load(open(os.path.join(part, 'config.json')))['lr'], 0.1)
      # A warm start reads the same parameters back, and refuses another model.
      warm = train_lib.config_to_dict(self.smoke_config(init_checkpoint=part))
      p_init, init_cfg = train_lib.load_init_checkpoint(warm)
      self.assertEqual(init_cfg['rounds'], 4)
      for a, b in zip(jax.tree.leaves(p_init), jax.tree.leaves(p_full), strict=True):
        np.testing.assert_array_equal(a, b)
      self.assertEqual(init_cfg['checkpoint_round'], 4)
      with self.assertRaisesRegex(ValueError, f"holds .*'{cfg['model']}', 1.0, 'mnist'.* expected "
                                              ".*'mnist_cnn', 1.0, 'mnist'"):
        train_lib.load_init_checkpoint({**warm, 'model': 'mnist_cnn'})
      # An unfinished run (checkpoint at round 2 of 4) is refused as a start.
      shutil.copytree(part, os.path.join(d, 'cut'))
      cut_cfg = json.load(open(os.path.join(d, 'cut', 'config.json')))
      cut_cfg['rounds'] = 6   # as if interrupted after its last checkpoint
      json.dump(cut_cfg, open(os.path.join(d, 'cut', 'config.json'), 'w'))
      with self.assertRaisesRegex(ValueError, 'holds round 4 of 6'):
        train_lib.load_init_checkpoint({**warm, 'init_checkpoint': os.path.join(d, 'cut')})
      with self.assertRaisesRegex(ValueError, "unknown data set 'svhn'"):
        data_lib.dataset_info('svhn')
      self.assertEqual(data_lib.dataset_info('cifar10'), ((32, 32, 3), 10))

  def test_global_model_turning_non_finite_stops_the_run(self):
    mean = aggregators.weighted_mean()
    def overflow(updates, weights, state):   # an aggregate that overflows the model
      out, w, state, diag = mean.update(updates, weights, state)
      return jax.tree.map(lambda x: x * jnp.inf, out), w, state, diag
    with tempfile.TemporaryDirectory() as d, mock.patch.object(
        train_lib, 'build_aggregator', lambda cfg: aggregators.Aggregator(mean.init, overflow)):
      with self.assertRaisesRegex(train_lib.TrainingDivergedError,
                                  r"round 1: the global model became non-finite.*lr=0.05.*"
                                  r"'mean'"):
        train_lib.train(self.smoke_config(rounds=2), d, log=lambda m: None)
      self.assertFalse(os.path.exists(os.path.join(d, train_lib.CHECKPOINT)))
      self.assertEqual(os.path.getsize(os.path.join(d, 'metrics.jsonl'))
                       if os.path.exists(os.path.join(d, 'metrics.jsonl')) else 0, 0)

  def test_every_client_loss_non_finite_stops_the_run(self):
    cfg = train_lib.config_to_dict(self.smoke_config())
    train_lib.check_round_finite(cfg, 3, True, np.array([np.nan, 1.0]))   # one is enough
    with self.assertRaisesRegex(train_lib.TrainingDivergedError,
                                r'round 7: the local training loss of every sampled client .*'
                                r'lr=0.05.*checkpoint holds round 6'):
      train_lib.check_round_finite(cfg, 7, True, np.array([np.nan, np.inf]), last_checkpoint=6)

  def test_bad_config_values(self):
    for kw, msg in ((dict(lr=float('inf')), r'lr must be finite, got inf'),
                    (dict(lr=1e6), r'lr must be <= 10 \(range \(0, 10\]\), got 1000000.0'),
                    (dict(momentum=float('nan')), 'momentum must be finite'),
                    (dict(eval_pgd_eps=(0.1, float('nan'))), r'eval_pgd_eps\[1\] must be finite'),
                    (dict(dp_sigma=-1.0), r'dp_sigma must be >= 0 \(range \[0, inf\)\)'),
                    (dict(dataset='imagenet'), 'imagenet'),
                    (dict(model='resnet'), 'resnet'),
                    (dict(clients_per_round=50), 'clients_per_round'),
                    (dict(rounds=0), 'rounds'),
                    (dict(partition='shards'), 'shards')):
      with self.subTest(kw=kw), self.assertRaisesRegex(ValueError, msg):
        train_lib.build_experiment(self.smoke_config(**kw))

  def test_partition_that_cannot_fill_clients(self):
    with self.assertRaisesRegex(ValueError, '30'):
      train_lib.build_experiment(self.smoke_config(num_clients=30, client_pool_size=20))


if __name__ == '__main__':
  absltest.main()
