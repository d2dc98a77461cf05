"""Runs of a vectorized batch split over 8 simulated CPU devices equal one device."""
import os
import subprocess
import sys
import textwrap

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import os, sys, tempfile
    import jax, numpy as np
    from fl_jax.simulation import batch as batch_lib
    from fl_jax.simulation import train as train_lib
    from launch.configs import mnist_fedavg
    assert len(jax.devices()) == 8, jax.devices()
    d = tempfile.mkdtemp()
    cfgs = []
    for i in range(8):   # seeds, lr and clipping traced; own partition per run
      c = mnist_fedavg.get_config('smoke').to_dict()
      c.update(rounds=4, eval_every=2, seed=i, data_seed=i % 2, lr=0.05 + 0.01 * i,
               norm_bound=1.0 + 0.1 * i, aggregator='median', partition='dirichlet')
      cfgs.append(c)
    logs = []
    def run(tag, mesh):
      dirs = [os.path.join(d, f'{tag}{i}') for i in range(8)]
      out = batch_lib.run_batch(cfgs, dirs, batch_dir=os.path.join(d, tag),
                                log=logs.append, mesh=mesh, evals_per_block=1)
      return dirs, out
    mesh = batch_lib.runs_mesh(8)
    one, s1 = run('one', None)
    many, s8 = run('many', mesh)
    # Two blocks of rounds, one compilation: no retrace after the first block.
    assert 'compiled the block 1 time(s)' in logs[-1], logs
    for a, b in zip(one, many):
      _, pa, _ = train_lib.restore(a)
      _, pb, _ = train_lib.restore(b)
      for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
    for x, y in zip(s1, s8):
      assert abs(x['test_accuracy'] - y['test_accuracy']) < 1e-6, (x, y)
    # The state really is split over the devices, one run per device.
    b = batch_lib.build_batch(cfgs)
    state = batch_lib.make_init_fn(b)({k: jax.numpy.asarray(v) for k, v in b.settings.items()},
                                      b.defender_data, None)
    placed = batch_lib.place(state, mesh, True)
    leaf = jax.tree.leaves(placed.params)[0]
    assert len(leaf.sharding.device_set) == 8 and leaf.addressable_shards[0].data.shape[0] == 1
    # Bad input: runs that do not divide over the mesh; more devices than exist.
    try:
      batch_lib.run_batch(cfgs[:6], [os.path.join(d, f'x{i}') for i in range(6)],
                          batch_dir=os.path.join(d, 'x'), log=lambda m: None, mesh=mesh)
      raise AssertionError('6 runs on 8 devices did not raise')
    except ValueError as e:
      assert '6 runs do not split over the 8 devices' in str(e), e
    try:
      batch_lib.runs_mesh(9)
      raise AssertionError('9 devices did not raise')
    except ValueError as e:
      assert 'num_devices=9' in str(e) and '1 to 8' in str(e), e
    print('SHARDED_OK')
''')


CLIENTS_SCRIPT = textwrap.dedent('''
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    sys.path.insert(0, 'tests')
    from test_aggregators import RULES
    import fl_test_utils
    from fl_jax import simulation
    assert len(jax.devices()) == 8
    mesh = jax.make_mesh((8,), ('clients',), axis_types=(jax.sharding.AxisType.Auto,))
    split = NamedSharding(mesh, P('clients'))
    rng = np.random.default_rng(0)
    ups = {'w': jnp.asarray(rng.normal(size=(16, 7, 8)), jnp.float32),
           'b': jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)}
    weights = jnp.asarray(rng.integers(1, 5, size=16), jnp.float32)
    for name, make in RULES.items():   # every rule on a client-sharded stack
      agg = make()
      state = agg.init(jax.tree.map(lambda x: x[0], ups))
      fn = jax.jit(agg.update)
      ref = fn(ups, weights, state)
      # Weiszfeld's slow contraction turns float32 summation order into ~1e-5 moves of
      # its fixed point (see test_aggregators); every other rule agrees to rounding.
      tol = 1e-4 if name == 'geometric_median' else 1e-6
      got = fn(jax.device_put(ups, split), jax.device_put(weights, split), state)
      for a, b in zip(jax.tree.leaves(ref[0]), jax.tree.leaves(got[0])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=tol, err_msg=name)
      # The same stack moved to a split by parameter ('w' along its last axis).
      by_param = jax.jit(lambda u, w, s, agg=agg: agg.update(
          simulation.round.split_by_parameter(u, mesh), w, s))
      got = by_param(jax.device_put(ups, split), jax.device_put(weights, split), state)
      for a, b in zip(jax.tree.leaves(ref[0]), jax.tree.leaves(got[0])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=tol, err_msg=name + ' by parameter')
    # A round whose client data is sharded by client over the mesh.
    data = fl_test_utils.tiny_clients(num_clients=16, n=10)
    round_fn = simulation.make_round_fn(fl_test_utils.shift_update, RULES['median_network'](),
                                        num_clients=16, clients_per_round=8, seed=0)
    fresh = lambda: simulation.init_server_state({'p': jnp.zeros((3,))},
                                                 RULES['median_network']())
    s1, _ = round_fn(fresh(), data)     # the state is donated: a fresh one per run
    s1, _ = round_fn(s1, data)
    s2, _ = round_fn(fresh(), jax.device_put(data, split))
    s2, _ = round_fn(s2, jax.device_put(data, split))
    np.testing.assert_allclose(s1.params['p'], s2.params['p'], rtol=1e-6)
    # The sampled clients split over the devices inside the round (client_sharding):
    # FedAvg becomes a cross-device reduction, and the result is the same.
    from fl_jax.simulation import distributed
    split8 = distributed.split_leading(distributed.make_mesh(8, 'clients'))
    mean = RULES['mean']()
    fresh = lambda: simulation.init_server_state({'p': jnp.zeros((3,))}, mean)
    plain = simulation.make_round_fn(fl_test_utils.shift_update, mean, num_clients=16,
                                     clients_per_round=8, seed=0)
    split_fn = simulation.make_round_fn(fl_test_utils.shift_update, mean, num_clients=16,
                                        clients_per_round=8, seed=0, client_sharding=split8)
    hlo = split_fn.lower(fresh(), data).compile().as_text()
    assert 'all-reduce' in hlo, 'no cross-device reduction in the client-sharded round'
    np.testing.assert_allclose(plain(fresh(), data)[0].params['p'],
                               split_fn(fresh(), data)[0].params['p'], rtol=1e-6)
    # A state placed on the mesh once (as train.train places it): every round reuses
    # the first round's program.
    s = jax.device_put(fresh(), distributed.replicated(split8.mesh))
    n0 = split_fn._cache_size()
    for _ in range(3):
      s, _ = split_fn(s, data)
    assert split_fn._cache_size() - n0 <= 1, split_fn._cache_size()
    by_client = simulation.make_round_fn(fl_test_utils.shift_update, mean, num_clients=16,
                                         clients_per_round=8, seed=0, client_sharding=split8,
                                         aggregate_layout='clients')
    np.testing.assert_allclose(plain(fresh(), data)[0].params['p'],
                               by_client(fresh(), data)[0].params['p'], rtol=1e-6)
    try:
      simulation.make_round_fn(fl_test_utils.shift_update, mean, num_clients=16,
                               clients_per_round=6, seed=0, client_sharding=split8)
      raise AssertionError('6 clients over 8 devices accepted')
    except ValueError as e:
      assert 'clients_per_round=6' in str(e), e
    # A defended, attacked training run with clients and held-out points split over
    # 8 devices (client_devices) equals the run on one device.
    import os, tempfile
    from fl_jax.simulation import train as train_lib
    from launch.configs import mnist_fedavg
    d = tempfile.mkdtemp()
    out = {}
    for n in (1, 8):
      c = mnist_fedavg.get_config('smoke')
      c.update(num_clients=24, clients_per_round=8, rounds=2, eval_every=2, attack='backdoor',
               num_malicious=6, attack_min_malicious=1, backdoor_warmup_epochs=0,
               defender=True, defender_val_points=48, defender_cert_points=16,
               defender_checks='clean,cert_loss', aggregator='median', client_devices=n)
      train_lib.train(c, os.path.join(d, str(n)), log=lambda m: None)
      out[n] = train_lib.restore(os.path.join(d, str(n)))[1]
    for a, b in zip(jax.tree.leaves(out[1]), jax.tree.leaves(out[8])):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    print('CLIENTS_OK')
''')


def _run(script):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)


class ShardedClientsTest(absltest.TestCase):

  def test_every_rule_and_a_round_on_client_sharded_data_equal_unsharded(self):
    out = _run(CLIENTS_SCRIPT)
    self.assertEqual(out.returncode, 0, out.stderr[-4000:])
    self.assertIn('CLIENTS_OK', out.stdout)


class ShardedRunsTest(absltest.TestCase):

  def test_runs_split_over_eight_devices_equal_one_device(self):
    out = _run(SCRIPT)
    self.assertEqual(out.returncode, 0, out.stderr[-4000:])
    self.assertIn('SHARDED_OK', out.stdout)


if __name__ == '__main__':
  absltest.main()
