"""The attacker's local training: SGD with an optional periodic l2 projection.

The same local SGD as honest clients (:mod:`fl_jax.client.update`: momentum,
PyTorch-style weight decay, ``lr_0 * decay**round``, real samples shuffled
first and all-padding batches skipped), with two additions a white-box
attacker needs:

* every ``k`` optimiser steps (and once at the end) the model is projected
  onto the l2 ball of radius ``delta`` around the global model, the PGD
  attack of the edge-case paper (their appendix: projecting once every 10
  SGD steps works better than at every step);
* labels may be any per-example array (``[n]`` integer labels, or ``[n, C]``
  soft labels for distillation), whatever ``loss_fn`` expects.

With ``radius = inf`` this is plain local training.

References:
  Wang et al., "Attack of the Tails", NeurIPS 2020, Section 2 (b) and
  Appendix A (hyper-parameters of the PGD attack).
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from fl_jax.adversarial.pgd import check_int
from fl_jax.attacks.projection import project_l2_ball
from fl_jax.client.update import ClientMetrics
from fl_jax.client.update import learning_rate
from fl_jax.client.update import LocalSGD
from fl_jax.types import Array, Params, PerExampleLossFn, PRNGKey


def _pad(a: Array, pad: int) -> Array:
  return jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)])


def make_local_trainer(loss_fn: PerExampleLossFn, hp: LocalSGD, *,
                       project_every: Optional[int] = None) -> Callable:
  """Builds ``train(global_params, x, y, mask, key, round, radius)``.

  .. math::
      w \\leftarrow w - \\eta_t\\, \\mathrm{mom}(\\nabla \\ell + \\lambda w),
      \\qquad w \\leftarrow \\Pi_{B_2(w_g, \\delta)}(w)
      \\text{ after every } k \\text{ steps and at the end}

  Args:
    loss_fn: ``loss_fn(params, x[B, ...], y[B, ...], key) -> losses[B]``.
    hp: local SGD hyper-parameters (epochs, batch size, lr schedule,
      momentum, weight decay).
    project_every: ``k >= 1`` steps between projections; ``None`` projects
      only once, at the end.

  Returns:
    ``train(global_params, x[n, ...], y[n, ...], mask[n], key, round_idx,
    radius=inf) -> (params, ClientMetrics)``, pure and jit-able; ``radius``
    may be traced. The returned model satisfies ``||w - w_g||_2 <= radius``.
  """
  hp.validate()
  if project_every is not None:
    check_int('project_every', project_every, 1)
  tx = optax.chain(optax.add_decayed_weights(hp.weight_decay),
                   optax.trace(decay=hp.momentum))
  bsz = hp.batch_size

  def batch_loss(params, x, y, m, key):
    losses = loss_fn(params, x, y, key)
    m = m.astype(losses.dtype)
    return jnp.sum(losses * m) / jnp.maximum(jnp.sum(m), 1.0)

  grad_fn = jax.value_and_grad(batch_loss)

  def train(global_params: Params, x: Array, y: Array, mask: Array,
            key: PRNGKey, round_idx, radius=jnp.inf) -> tuple:
    n = mask.shape[0]
    num_batches = -(-n // bsz)
    pad = num_batches * bsz - n
    x, y, m = _pad(x, pad), _pad(y, pad), _pad(mask.astype(bool), pad)
    lr = learning_rate(hp, round_idx)
    radius = jnp.asarray(radius, jnp.float32)

    def sgd_step(carry, bx, by, bm, bkey):
      params, opt_state, loss_sum, steps = carry
      loss, grads = grad_fn(params, bx, by, bm, bkey)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
      steps = steps + 1
      if project_every is not None:
        due = steps % project_every == 0
        projected = project_l2_ball(params, global_params, radius)
        params = jax.tree.map(lambda a, b: jnp.where(due, a, b), projected,
                              params)
      return params, opt_state, loss_sum + loss * jnp.sum(bm), steps

    def step(carry, batch):
      idx, bkey = batch
      bx, by, bm = x[idx], y[idx], m[idx]
      carry = jax.lax.cond(jnp.any(bm), sgd_step, lambda c, *_: c, carry, bx,
                           by, bm, bkey)
      return carry, None

    def epoch(carry, ekey):
      pkey, bkey = jax.random.split(ekey)
      order = jnp.argsort(jnp.where(m, jax.random.uniform(pkey, m.shape), 2.0))
      idx = order.reshape(num_batches, bsz)
      carry, _ = jax.lax.scan(step, carry, (idx, jax.random.split(bkey, num_batches)))
      return carry, None

    init = (global_params, tx.init(global_params), jnp.zeros((), jnp.float32),
            jnp.zeros((), jnp.int32))
    (params, _, loss_sum, steps), _ = jax.lax.scan(
        epoch, init, jax.random.split(key, hp.local_epochs))
    params = project_l2_ball(params, global_params, radius)
    n_real = jnp.sum(mask)
    metrics = ClientMetrics(
        train_loss=loss_sum / jnp.maximum(n_real * hp.local_epochs, 1),
        num_examples=n_real.astype(jnp.int32), num_steps=steps)
    return params, metrics

  return train
