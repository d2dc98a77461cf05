"""Evaluation: clean / PGD / per-client accuracy, AP ratio, Krum selections.

Large sets are evaluated in one jitted call without a Python loop over
batches: the ``N`` examples are padded to ``ceil(N / c) * c`` (``c`` the chunk
size), reshaped to ``[N / c, c, ...]`` and mapped over with ``lax.map``; the
padding is masked out of every count. Each jitted implementation is built once
per ``(apply_fn, chunk, static options)`` by a cached factory, so calling an
evaluation every round with new parameters does not retrace (pass the *same*
``apply_fn`` object each time; a fresh lambda per call defeats the cache).

A backdoor / targeted success rate is :func:`accuracy` on the triggered inputs
against the attacker's target labels.

References:
  Madry et al., "Towards Deep Learning Models Resistant to Adversarial
  Attacks", ICLR 2018 (PGD evaluation with restarts).
  Wang et al., "Attack of the Tails: Yes, You Really Can Backdoor Federated
  Learning", NeurIPS 2020 (AP ratio, Krum selections).
"""
import functools
import numbers

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fl_jax.adversarial.pgd import check_attack_args
from fl_jax.adversarial.pgd import check_scalar
from fl_jax.adversarial.pgd import pgd
from fl_jax.types import ApplyFn, Array, Params, PRNGKey

_CACHE_SIZE = 64


# --- input checks (before tracing) -------------------------------------------


def _check_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f'{name} must be an int, got {value!r}')
  if value < minimum:
    raise ValueError(f'{name} must be >= {minimum}, got {value!r}')


def _check_xy(x, y):
  if not hasattr(x, 'shape') or len(x.shape) < 1:
    raise ValueError(f'x must be an array [N, ...], got {type(x)}')
  if not hasattr(y, 'shape') or tuple(y.shape) != (x.shape[0],):
    raise ValueError(f'y must have shape [N] = ({x.shape[0]},), got '
                     f'{getattr(y, "shape", y)}')
  if x.shape[0] < 1:
    raise ValueError('cannot evaluate on an empty set (N = 0)')
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f'y must hold integer labels, got dtype {y.dtype}')


# --- chunking ----------------------------------------------------------------


def _chunk(x, y, chunk):
  """Pads ``[N, ...]`` to a multiple of ``chunk``; returns chunked arrays.

  Returns:
    ``(x[M, chunk, ...], y[M, chunk], valid[M, chunk], index[M, chunk])``.
  """
  n = x.shape[0]
  m = -(-n // chunk)
  pad = m * chunk - n
  xp = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  yp = jnp.pad(y, [(0, pad)])
  index = jnp.arange(m * chunk, dtype=jnp.int32)
  return (xp.reshape((m, chunk) + x.shape[1:]), yp.reshape(m, chunk),
          (index < n).reshape(m, chunk), index.reshape(m, chunk))


def _predict(apply_fn, params, x):
  return jnp.argmax(apply_fn(params, x), axis=-1)


# --- clean accuracy -----------------------------------------------------------


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _accuracy_impl(apply_fn, chunk):

  @jax.jit
  def run(params, x, y):
    xs, ys, valid, _ = _chunk(x, y, chunk)

    def one(args):
      xc, yc, vc = args
      return jnp.sum((_predict(apply_fn, params, xc) == yc) & vc)

    correct = jnp.sum(lax.map(one, (xs, ys, valid)))
    return correct.astype(jnp.float32) / x.shape[0]

  return run


def accuracy(apply_fn: ApplyFn, params: Params, x: Array, y: Array,
             chunk_size: int = 1000) -> Array:
  """Top-1 accuracy ``(1/N) sum_i [argmax f(x_i) = y_i]``.

  Args:
    apply_fn: ``apply_fn(params, x[B, ...]) -> logits[B, K]``.
    params: model parameters.
    x: inputs ``[N, ...]``.
    y: integer labels ``[N]``.
    chunk_size: examples per forward pass (``min(chunk_size, N)`` is used).

  Returns:
    A float32 scalar array in ``[0, 1]``.
  """
  _check_int('chunk_size', chunk_size, 1)
  _check_xy(x, y)
  chunk = min(chunk_size, x.shape[0])
  return _accuracy_impl(apply_fn, chunk)(params, x, y)


# --- PGD accuracy -------------------------------------------------------------


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _pgd_accuracy_impl(apply_fn, chunk, steps, restarts, random_start,
                       keep_best):

  @jax.jit
  def run(params, x, y, key, eps, step_size, temperature, lo, hi):
    xs, ys, valid, index = _chunk(x, y, chunk)

    def one(args):
      xc, yc, vc, ic = args
      robust = _predict(apply_fn, params, xc) == yc

      def restart(r, robust):
        key_r = jax.random.fold_in(key, r)
        keys = jax.vmap(lambda i: jax.random.fold_in(key_r, i))(ic)
        x_adv = pgd(apply_fn, params, xc, yc, keys, eps=eps,
                            steps=steps, step_size=step_size,
                            random_start=random_start, temperature=temperature,
                            keep_best=keep_best, lo=lo, hi=hi)
        return robust & (_predict(apply_fn, params, x_adv) == yc)

      robust = lax.fori_loop(0, restarts, restart, robust)
      return jnp.sum(robust & vc)

    robust = jnp.sum(lax.map(one, (xs, ys, valid, index)))
    return robust.astype(jnp.float32) / x.shape[0]

  return run


def pgd_accuracy(apply_fn: ApplyFn, params: Params, x: Array, y: Array,
                 key: PRNGKey, eps_list, *, steps: int = 20, step_size=None,
                 restarts: int = 1, temperature=1.0, chunk_size: int = 500,
                 random_start: bool = True, keep_best: bool = True, lo=0.0,
                 hi=1.0) -> dict:
  """Accuracy under L-inf PGD, for each radius in ``eps_list``.

  An example counts as robust iff it is classified correctly when clean *and*
  the adversarial example of every restart is still classified correctly:

  .. math::
      \\mathrm{acc}_\\epsilon = \\frac{1}{N}\\sum_i [f(x_i) = y_i]
      \\prod_{r<R} [f(\\mathrm{PGD}_r(x_i)) = y_i].

  The attack is crafted with the logits divided by ``temperature`` (the
  attacker's trick against defensive distillation) and the examples are
  judged by the model's argmax, i.e. at ``T = 1``. Restart ``r`` of example
  ``i`` starts from noise keyed by ``fold_in(fold_in(key, r), i)``, so the
  result does not depend on ``chunk_size``. All radii (and crafting
  temperatures) share one compilation.

  Args:
    apply_fn: ``apply_fn(params, x[B, ...]) -> logits[B, K]``.
    params: model parameters.
    x: inputs ``[N, ...]`` in ``[lo, hi]``.
    y: integer labels ``[N]``.
    key: PRNG key for the random starts.
    eps_list: radii ``>= 0`` (a float or a sequence of floats).
    steps: PGD steps ``>= 1``.
    step_size: PGD step; ``None`` means ``2.5 * eps / steps`` for each eps.
    restarts: random restarts ``>= 1``.
    temperature: crafting temperature ``T > 0``.
    chunk_size: examples per attacked batch.
    random_start: start each restart at a random point of the ball (needed
      for ``restarts > 1`` to differ).
    keep_best: use the first successful PGD iterate (see
      :func:`fl_jax.adversarial.pgd`); the default makes the evaluation at
      least as strong as the last iterate.
    lo: lower end of the valid input range.
    hi: upper end of the valid input range.

  Returns:
    ``{float(eps): float32 scalar array}`` (see :func:`pgd_accuracy_at` for
    one radius that may be traced).

  Raises:
    ValueError: for a negative or non-finite eps, ``steps < 1``,
      ``restarts < 1``, ``step_size <= 0``, ``temperature <= 0``,
      ``restarts > 1`` without random start, or mismatched shapes.
  """
  eps_values = [eps_list] if np.ndim(eps_list) == 0 else list(eps_list)
  if not eps_values:
    raise ValueError('eps_list is empty')
  for eps in eps_values:
    check_scalar('eps', eps, nonnegative=True)
  return {float(eps): pgd_accuracy_at(
      apply_fn, params, x, y, key, float(eps), steps=steps, step_size=step_size,
      restarts=restarts, temperature=temperature, chunk_size=chunk_size,
      random_start=random_start, keep_best=keep_best, lo=lo, hi=hi)
          for eps in eps_values}


def pgd_accuracy_at(apply_fn: ApplyFn, params: Params, x: Array, y: Array,
                    key: PRNGKey, eps, *, steps: int = 20, step_size=None,
                    restarts: int = 1, temperature=1.0, chunk_size: int = 500,
                    random_start: bool = True, keep_best: bool = True, lo=0.0,
                    hi=1.0) -> Array:
  """:func:`pgd_accuracy` at one radius ``eps``, which may be traced.

  A traced ``eps`` (or ``step_size``, e.g. one per run of a vectorized sweep)
  shares the compiled attack of every concrete radius. Arguments and checks
  are those of :func:`pgd_accuracy`; returns a float32 scalar array.
  """
  _check_int('chunk_size', chunk_size, 1)
  _check_int('restarts', restarts, 1)
  _check_xy(x, y)
  check_scalar('eps', eps, nonnegative=True)
  if step_size is not None:
    check_scalar('step_size', step_size, positive=True)
  check_attack_args(eps=0.0, steps=steps, step_size=1.0,
                    temperature=temperature, lo=lo, hi=hi)
  if restarts > 1 and not random_start:
    raise ValueError(f'restarts={restarts} > 1 needs random_start=True '
                     '(without it every restart is the same attack)')
  chunk = min(chunk_size, x.shape[0])
  run = _pgd_accuracy_impl(apply_fn, chunk, steps, restarts,
                           bool(random_start), bool(keep_best))
  eps = jnp.asarray(eps, jnp.float32)
  a = 2.5 * eps / steps if step_size is None else jnp.asarray(step_size, jnp.float32)
  return run(params, x, y, key, eps, a, jnp.asarray(temperature, jnp.float32),
             jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32))



# --- per-client accuracy and the AP ratio ------------------------------------


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _per_client_impl(apply_fn):

  @jax.jit
  def run(params, client_x, client_y, client_mask):

    def one(args):
      xc, yc, mc = args
      correct = jnp.sum((_predict(apply_fn, params, xc) == yc) & mc)
      count = jnp.sum(mc)
      return jnp.where(count > 0,
                       correct.astype(jnp.float32) / jnp.maximum(count, 1),
                       jnp.nan)

    return lax.map(one, (client_x, client_y, client_mask.astype(bool)))

  return run


def per_client_accuracy(apply_fn: ApplyFn, params: Params, client_x: Array,
                        client_y: Array, client_mask: Array) -> Array:
  """Accuracy of one model on each client's own (padded) data.

  .. math:: p_k = \\frac{\\sum_j m_{kj} [f(x_{kj}) = y_{kj}]}{\\sum_j m_{kj}}

  Args:
    apply_fn: ``apply_fn(params, x[B, ...]) -> logits[B, K]``.
    params: model parameters.
    client_x: ``[K, n, ...]`` padded client inputs.
    client_y: ``[K, n]`` integer labels.
    client_mask: ``[K, n]`` true (or nonzero) for real examples.

  Returns:
    ``[K]`` float32 accuracies; a client without any real example has an
    undefined accuracy, returned as NaN (never a made-up 0 or 1; the
    :func:`ap_ratio` skips it).
  """
  if not hasattr(client_x, 'shape') or len(client_x.shape) < 2:
    raise ValueError(f'client_x must be [K, n, ...], got '
                     f'{getattr(client_x, "shape", client_x)}')
  lead = tuple(client_x.shape[:2])
  for name, arr in (('client_y', client_y), ('client_mask', client_mask)):
    if not hasattr(arr, 'shape') or tuple(arr.shape) != lead:
      raise ValueError(f'{name} must have shape [K, n] = {lead}, got '
                       f'{getattr(arr, "shape", arr)}')
  if not jnp.issubdtype(client_y.dtype, jnp.integer):
    raise ValueError(f'client_y must hold integer labels, got dtype '
                     f'{client_y.dtype}')
  if lead[0] < 1 or lead[1] < 1:
    raise ValueError(f'need at least one client and one slot, got {lead}')
  return _per_client_impl(apply_fn)(params, client_x, client_y, client_mask)


def ap_ratio(per_client_acc: Array) -> Array:
  """Accuracy-parity ratio ``p_min / p_max`` (Wang et al. 2020, Sec. 4).

  1 means perfect accuracy parity; 0 means some client's data is entirely
  misclassified. Conventions: NaN entries (clients without data, see
  :func:`per_client_accuracy`) are ignored; if every remaining client has
  accuracy 0 then ``0 / 0`` is defined as 0 (every client is completely
  misclassified, so the "0 iff some client is completely misclassified"
  reading of the paper holds); if no entry is defined the result is NaN.

  Args:
    per_client_acc: ``[K]`` accuracies in ``[0, 1]`` (or NaN).

  Returns:
    A float32 scalar in ``[0, 1]`` (NaN only if every entry is NaN).
  """
  acc = per_client_acc
  if not hasattr(acc, 'shape') or len(acc.shape) != 1 or acc.shape[0] < 1:
    raise ValueError(f'per_client_acc must be a non-empty [K] array, got '
                     f'{getattr(acc, "shape", acc)}')
  if not isinstance(acc, jax.core.Tracer):
    arr = np.asarray(acc, np.float64)
    bad = ~np.isnan(arr) & ((arr < 0) | (arr > 1))
    if bad.any():
      raise ValueError(f'accuracies must lie in [0, 1] (or be NaN), got '
                       f'{arr[bad].tolist()}')
  acc = jnp.asarray(acc, jnp.float32)
  defined = ~jnp.isnan(acc)
  p_min = jnp.min(jnp.where(defined, acc, jnp.inf))
  p_max = jnp.max(jnp.where(defined, acc, -jnp.inf))
  ratio = jnp.where(p_max > 0, p_min / jnp.where(p_max > 0, p_max, 1.0), 0.0)
  return jnp.where(jnp.any(defined), ratio, jnp.nan)


# --- Krum / Multi-Krum selections ---------------------------------------------


def selection_counts(selected_masks: Array, client_ids: Array,
                     num_clients: int) -> Array:
  """How often each client was selected (e.g. by Krum / Multi-Krum).

  .. math:: c_k = \\sum_{r, j} [s_{rj}]\\,[\\mathrm{id}_{rj} = k]

  Args:
    selected_masks: ``[R, C]`` bool (or 0/1): slot ``j`` of round ``r`` was
      selected by the aggregator.
    client_ids: ``[R, C]`` integer global id of the client in slot ``j`` of
      round ``r``; ids of unselected slots are ignored (may be padding such
      as -1); selected ids must lie in ``[0, num_clients)``.
    num_clients: total number of clients ``>= 1``.

  Returns:
    ``[num_clients]`` int32 counts.
  """
  _check_int('num_clients', num_clients, 1)
  for name, arr in (('selected_masks', selected_masks),
                    ('client_ids', client_ids)):
    if not hasattr(arr, 'shape') or len(arr.shape) != 2:
      raise ValueError(f'{name} must be [R, C], got '
                       f'{getattr(arr, "shape", arr)}')
  if tuple(selected_masks.shape) != tuple(client_ids.shape):
    raise ValueError(f'selected_masks {selected_masks.shape} and client_ids '
                     f'{client_ids.shape} must have the same shape')
  if not jnp.issubdtype(client_ids.dtype, jnp.integer):
    raise ValueError(f'client_ids must be integers, got {client_ids.dtype}')
  if not (isinstance(selected_masks, jax.core.Tracer)
          or isinstance(client_ids, jax.core.Tracer)):
    sel = np.asarray(selected_masks).astype(bool)
    ids = np.asarray(client_ids)[sel]
    bad = (ids < 0) | (ids >= num_clients)
    if bad.any():
      raise ValueError(f'selected client ids must lie in [0, {num_clients}), '
                       f'got {sorted(set(ids[bad].tolist()))}')
  sel = jnp.asarray(selected_masks).astype(bool).ravel()
  ids = jnp.where(sel, jnp.asarray(client_ids).ravel(), num_clients)
  return jnp.zeros(num_clients, jnp.int32).at[ids].add(1, mode='drop')
