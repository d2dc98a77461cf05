"""Local training of one client as a pure function (vmapped over clients).

Each client runs ``E`` local epochs of mini-batch SGD with momentum and l2
weight decay (PyTorch convention: ``g <- g + wd * w`` before momentum) at the
learning rate ``lr0 * decay**round`` of the edge-case paper (Wang et al. 2020,
Table 1). Samples are shuffled with the client's key so that real samples come
first in random order; padded samples never enter the loss, and a batch made
only of padding is skipped (``lax.cond``; a select under ``vmap``), so a client with ``n_i`` samples takes ``ceil(n_i / B)`` steps
per epoch whatever the padded size.
"""
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from fl_jax.adversarial.pgd import check_int
from fl_jax.types import Array, Params, PerExampleLossFn, PRNGKey, is_traced


class ClientBatch(NamedTuple):
  """One client's (padded) data: ``x[n, ...]``, ``y[n]``."""
  x: Array
  y: Array


class ClientMetrics(NamedTuple):
  """Per-client training figures (scalars; stacked ``[C]`` after vmap)."""
  train_loss: Array     # mean loss over the real samples seen, all epochs
  num_examples: Array   # number of real samples
  num_steps: Array      # optimiser steps taken


class LocalSGD(NamedTuple):
  """Hyper-parameters of local training (closed over by ``client_update``)."""
  local_epochs: int = 1
  batch_size: int = 32
  lr: float = 0.1
  lr_decay: float = 1.0
  momentum: float = 0.0
  weight_decay: float = 0.0

  def validate(self):
    """Checks the ranges; traced values (per-run sweep settings) pass as they are."""
    for name in ('local_epochs', 'batch_size'):
      v = getattr(self, name)
      if not isinstance(v, int) or v <= 0:
        raise ValueError(f'{name} must be a positive int, got {v!r}')
    checks = (('lr', lambda v: v > 0, '> 0'), ('lr_decay', lambda v: 0 < v <= 1, 'in (0, 1]'),
              ('momentum', lambda v: 0 <= v < 1, 'in [0, 1)'),
              ('weight_decay', lambda v: v >= 0, '>= 0'))
    for name, ok, what in checks:
      v = getattr(self, name)
      if not is_traced(v) and not ok(v):   # also rejects NaN
        raise ValueError(f'{name} must be {what}, got {v!r}')
    return self


def learning_rate(hp: LocalSGD, round_idx) -> Array:
  """``lr0 * decay**round``."""
  return hp.lr * jnp.power(jnp.asarray(hp.lr_decay, jnp.float32),
                           jnp.asarray(round_idx, jnp.float32))


def make_client_update(loss_fn: PerExampleLossFn, hp: LocalSGD, *,
                       project: Optional[Callable] = None,
                       project_every: Optional[int] = None) -> Callable:
  """Builds ``client_update`` for a per-example loss.

  Args:
    loss_fn: ``loss_fn(params, x[B, ...], y[B, ...], key) -> losses[B]``.
      Clean cross-entropy, PGD adversarial training and malicious objectives
      (integer or soft labels) all plug in here.
    hp: local SGD hyper-parameters.
    project: optional ``project(params, global_params, radius) -> params``
      applied after the last step (a white-box attacker's constraint, e.g.
      the l2 ball around the global model of the edge-case paper's PGD
      attack); ``None`` for honest clients.
    project_every: with ``project``, also project after every ``k``-th
      optimiser step (``None``: only at the end).

  Returns:
    ``client_update(global_params, data: ClientBatch, mask[n], key, round,
    radius=None) -> (new_params, ClientMetrics)``, pure and vmappable over
    clients (``in_axes=(None, 0, 0, 0, None)``); ``radius`` (may be traced;
    ``None``: inf) is handed to ``project`` and is an error without one.
  """
  hp.validate()
  if project_every is not None:
    if project is None:
      raise ValueError('project_every needs a project function')
    check_int('project_every', project_every, 1)
  tx = optax.chain(optax.add_decayed_weights(hp.weight_decay),
                   optax.trace(decay=hp.momentum))
  bsz = hp.batch_size

  def batch_loss(params, x, y, m, key):
    losses = loss_fn(params, x, y, key)
    m = m.astype(losses.dtype)
    return jnp.sum(losses * m) / jnp.maximum(jnp.sum(m), 1.0)

  grad_fn = jax.value_and_grad(batch_loss)

  def client_update(global_params: Params, data: ClientBatch, mask: Array,
                    key: PRNGKey, round_idx, radius=None) -> tuple:
    n = mask.shape[0]
    num_batches = -(-n // bsz)
    pad = num_batches * bsz - n
    x = jnp.concatenate([data.x, jnp.zeros((pad,) + data.x.shape[1:], data.x.dtype)])
    y = jnp.concatenate([data.y, jnp.zeros((pad,) + data.y.shape[1:], data.y.dtype)])
    m = jnp.concatenate([mask.astype(bool), jnp.zeros((pad,), bool)])
    lr = learning_rate(hp, round_idx)
    if project is None and radius is not None:
      raise ValueError(f'radius={radius!r} was given but this client update has no '
                       'project function (make_client_update(..., project=...))')
    radius = jnp.asarray(jnp.inf if radius is None else radius, jnp.float32)

    def sgd_step(carry, bx, by, bm, bkey):
      params, opt_state, loss_sum, steps = carry
      loss, grads = grad_fn(params, bx, by, bm, bkey)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
      steps = steps + 1
      if project_every is not None:
        due = steps % project_every == 0
        params = jax.tree.map(lambda a, b: jnp.where(due, a, b),
                              project(params, global_params, radius), params)
      return params, opt_state, loss_sum + loss * jnp.sum(bm), steps

    def step(carry, batch):
      idx, bkey = batch
      bx, by, bm = x[idx], y[idx], m[idx]
      # A batch of padding only is skipped. Under vmap this becomes a select.
      carry = jax.lax.cond(jnp.any(bm), sgd_step, lambda c, *_: c, carry, bx, by, bm, bkey)
      return carry, None

    def epoch(carry, ekey):
      pkey, bkey = jax.random.split(ekey)
      # Real samples first, in random order; padding last.
      order = jnp.argsort(jnp.where(m, jax.random.uniform(pkey, m.shape), 2.0))
      idx = order.reshape(num_batches, bsz)
      bkeys = jax.random.split(bkey, num_batches)
      carry, _ = jax.lax.scan(step, carry, (idx, bkeys))
      return carry, None

    init = (global_params, tx.init(global_params), jnp.zeros((), jnp.float32),
            jnp.zeros((), jnp.int32))
    ekeys = jax.random.split(key, hp.local_epochs)
    (params, _, loss_sum, steps), _ = jax.lax.scan(epoch, init, ekeys)
    if project is not None:
      params = project(params, global_params, radius)
    n_real = jnp.sum(mask.astype(jnp.int32))
    metrics = ClientMetrics(
        train_loss=loss_sum / jnp.maximum(n_real * hp.local_epochs, 1),
        num_examples=n_real,
        num_steps=steps)
    return params, metrics

  return client_update
