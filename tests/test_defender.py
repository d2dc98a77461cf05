"""The defender's accept / skip rule, by hand, and inside the jitted round."""
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import aggregators
from fl_jax import defender as defender_lib
from fl_jax import simulation


def fake_measure(params, data, key):
  """Metrics read straight off the parameters (so tests can dial them)."""
  del data, key
  return {'clean_accuracy': params['acc'], 'certifiable_loss@0.1': params['loss']}


def make(**kw):
  return defender_lib.make_defender(fake_measure, acc_keys=['clean_accuracy'],
                                    loss_keys=['certifiable_loss@0.1'], **kw)


class RuleTest(parameterized.TestCase):

  @parameterized.parameters(
      # (candidate acc, candidate loss, accept) against reference acc 0.9, loss 2.0
      (0.90, 2.0, True),
      (0.81, 2.0, True),        # 0.81 >= 0.9 * 0.9
      (0.80, 2.0, False),       # 0.80 < 0.81
      (0.95, 2.2, True),        # |2.2 - 2| = 0.2 <= 0.1 * 2 + 1e-3
      (0.95, 2.21, False),
      (0.95, 1.79, False),      # the loss may not drop by more than 10% either
      (0.95, float('nan'), False),
      (float('nan'), 2.0, False))
  def test_decisions_by_hand(self, acc, loss, accept):
    d = make()
    state = d.init({'acc': jnp.float32(0.9), 'loss': jnp.float32(2.0)}, None, None)
    ok, new_state, info = jax.jit(d.check)(
        {'acc': jnp.float32(acc), 'loss': jnp.float32(loss)}, state, None, None)
    self.assertEqual(bool(ok), accept)
    self.assertEqual(bool(info['accept']), accept)
    # The reference moves only on acceptance.
    expected_ref = acc if accept else 0.9
    np.testing.assert_allclose(new_state.reference['clean_accuracy'], expected_ref)

  def test_infinite_tolerance_around_a_zero_reference(self):
    # inf * 0 must not turn the band into NaN (which would reject everything).
    for kw in ({'loss_tol': float('inf')}, {'loss_down_tol': float('inf')},
               {'loss_tol': float('inf'), 'loss_down_tol': float('inf')}):
      d = make(**kw)
      state = d.init({'acc': jnp.float32(1.0), 'loss': jnp.float32(0.0)}, None, None)
      for loss, ok_expected in ((0.0, True), (5e-4, True),
                                (10.0, kw.get('loss_tol') == float('inf'))):
        ok, _, _ = d.check({'acc': jnp.float32(1.0), 'loss': jnp.float32(loss)}, state, None,
                           None)
        self.assertEqual(bool(ok), ok_expected, (kw, loss))

  def test_zero_reference_loss_uses_absolute_tolerance(self):
    d = make(loss_atol=0.01)
    state = d.init({'acc': jnp.float32(1.0), 'loss': jnp.float32(0.0)}, None, None)
    ok, _, _ = d.check({'acc': jnp.float32(1.0), 'loss': jnp.float32(0.005)}, state, None, None)
    self.assertTrue(bool(ok))
    ok, _, _ = d.check({'acc': jnp.float32(1.0), 'loss': jnp.float32(0.02)}, state, None, None)
    self.assertFalse(bool(ok))

  @parameterized.parameters(
      # (kwargs, candidate acc, candidate loss, accept); reference acc 0.9, loss 2.0
      ({'acc_atol': 0.02}, 0.79, 2.0, True),      # 0.79 >= 0.81 - 0.02
      ({'acc_atol': 0.02}, 0.78, 2.0, False),
      ({'loss_down_tol': float('inf')}, 0.9, 0.1, True),   # one-sided: any drop is fine
      ({'loss_down_tol': float('inf')}, 0.9, 2.21, False),  # ... but not a rise over 10%
      ({'loss_tol': 0.5, 'loss_down_tol': 0.2}, 0.9, 2.99, True),   # 2 + 0.5 * 2 + 1e-3
      ({'loss_tol': 0.5, 'loss_down_tol': 0.2}, 0.9, 3.01, False),
      ({'loss_tol': 0.5, 'loss_down_tol': 0.2}, 0.9, 1.61, True),   # 2 - 0.2 * 2 - 1e-3
      ({'loss_tol': 0.5, 'loss_down_tol': 0.2}, 0.9, 1.59, False))
  def test_slack_and_asymmetric_band(self, kw, acc, loss, accept):
    d = make(**kw)
    state = d.init({'acc': jnp.float32(0.9), 'loss': jnp.float32(2.0)}, None, None)
    ok, _, _ = jax.jit(d.check)({'acc': jnp.float32(acc), 'loss': jnp.float32(loss)}, state,
                                None, None)
    self.assertEqual(bool(ok), accept)

  @parameterized.parameters(({'acc_ratio': 1.5}, 'acc_ratio'), ({'loss_tol': -1.0}, 'loss_tol'),
                            ({'acc_atol': -0.1}, 'acc_atol'),
                            ({'loss_down_tol': float('nan')}, 'loss_down_tol'))
  def test_bad_hyper_parameters(self, kw, msg):
    with self.assertRaisesRegex(ValueError, msg):
      make(**kw)

  def test_needs_a_check(self):
    with self.assertRaisesRegex(ValueError, 'at least one check'):
      defender_lib.make_defender(fake_measure, acc_keys=[], loss_keys=[])


class RoundWithDefenderTest(absltest.TestCase):

  def test_rejected_round_keeps_the_model(self):
    # Each client "trains" by moving acc down by 0.3: the defender must refuse.
    def client_update(params, batch, mask, key, round_idx):
      del batch, key, round_idx
      new = {'acc': params['acc'] - 0.3, 'loss': params['loss']}
      from fl_jax.client import ClientMetrics
      return new, ClientMetrics(jnp.float32(0), jnp.sum(mask).astype(jnp.int32), jnp.int32(1))
    agg = aggregators.weighted_mean()
    d = make()
    fn = simulation.make_round_fn(client_update, agg, num_clients=3, clients_per_round=2,
                                  seed=0, defender=d, client_parallel='vmap')
    params = {'acc': jnp.float32(0.9), 'loss': jnp.float32(1.0)}
    state = simulation.init_server_state(params, agg, defender_state=d.init(params, None, None))
    from fl_jax.data import ClientData
    data = ClientData(jnp.zeros((3, 4, 2, 2, 1)), jnp.zeros((3, 4), jnp.int32),
                      jnp.ones((3, 4), bool), jnp.full((3,), 4, jnp.int32))
    new_state, rm = fn(state, data)
    self.assertFalse(bool(rm.defender['accept']))
    np.testing.assert_allclose(new_state.params['acc'], 0.9)
    np.testing.assert_allclose(rm.defender['clean_accuracy'], 0.6, rtol=1e-6)
    self.assertEqual(int(new_state.round), 1)


if __name__ == '__main__':
  absltest.main()
