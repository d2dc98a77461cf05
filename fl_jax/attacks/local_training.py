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

import jax.numpy as jnp

from fl_jax.attacks.projection import project_l2_ball
from fl_jax.client.update import ClientBatch
from fl_jax.client.update import LocalSGD
from fl_jax.client.update import make_client_update
from fl_jax.types import Array, Params, PerExampleLossFn, PRNGKey


def make_local_trainer(loss_fn: PerExampleLossFn, hp: LocalSGD, *,
                       project_every: Optional[int] = None) -> Callable:
  """Builds ``train(global_params, x, y, mask, key, round, radius)``.

  .. math::
      w \\leftarrow w - \\eta_t\\, \\mathrm{mom}(\\nabla \\ell + \\lambda w),
      \\qquad w \\leftarrow \\Pi_{B_2(w_g, \\delta)}(w)
      \\text{ after every } k \\text{ steps and at the end}

  It is the honest client update (:func:`fl_jax.client.make_client_update`)
  with :func:`project_l2_ball` as its projection, so attacker and honest
  clients share one training loop.

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
  update = make_client_update(loss_fn, hp, project=project_l2_ball,
                              project_every=project_every)

  def train(global_params: Params, x: Array, y: Array, mask: Array,
            key: PRNGKey, round_idx, radius=jnp.inf) -> tuple:
    return update(global_params, ClientBatch(x, y), mask, key, round_idx, radius)

  return train
