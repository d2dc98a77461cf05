"""L-infinity PGD and FGSM with a temperature on the softmax.

Projected gradient descent (Madry et al. 2018) maximises the cross-entropy of
a classifier over the L-infinity ball around each input, intersected with the
valid pixel box::

    x_0     = clip(x + U[-eps, eps], lo, hi)                  (random start)
    x_{k+1} = clip(clip(x_k + a * sign(grad_x L(x_k)), x - eps, x + eps),
                   lo, hi)
    L(z)    = CE(softmax(f(z) / T), y)

with step size ``a`` and a temperature ``T`` dividing the logits. ``T = 1`` is
the usual attack. A large ``T`` is the attacker's answer to defensive
distillation (Carlini & Wagner 2016): a distilled model run at ``T = 1`` has
logits so large that the softmax saturates and, in float32, the gradient of
the cross-entropy is *exactly* zero, so plain PGD never moves. Dividing the
logits by the distillation temperature restores the gradient; the examples are
then evaluated on the model at ``T = 1`` (the argmax does not depend on ``T``).
The cross-entropy is deliberately kept (no logit-margin loss), so that the
masking effect that a defender would see is reproduced faithfully.

A targeted attack takes ``y`` as the target labels and *minimises* ``L``.
FGSM (Goodfellow et al. 2015) is one step of size ``eps`` without random start.

All functions are pure and batched (``x`` is ``[B, H, W, C]`` or any
``[B, ...]`` that ``apply_fn`` accepts); they can be jitted and vmapped
(e.g. over a stack of client parameters, or over a traced ``eps``).

References:
  Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models
  Resistant to Adversarial Attacks", ICLR 2018.
  Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial
  Examples", ICLR 2015.
  Carlini, Wagner, "Defensive Distillation is Not Robust to Adversarial
  Examples", arXiv:1607.04311, 2016.
"""
import functools
import numbers

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from fl_jax.types import ApplyFn, Array, Params, PRNGKey, is_traced


# --- validation (runs before tracing; traced values are left to the caller) --


_is_traced = is_traced


def check_scalar(name: str, value, *, positive: bool = False,
                 nonnegative: bool = False):
  """Raises ValueError unless a concrete ``value`` is a finite real scalar.

  Traced values (inside an outer ``jit``/``vmap``) cannot be inspected and are
  accepted as they are.
  """
  if _is_traced(value):
    return
  arr = np.asarray(value)
  if arr.ndim != 0 or not np.issubdtype(arr.dtype, np.number) or (
      np.issubdtype(arr.dtype, np.complexfloating)):
    raise ValueError(f'{name} must be a real scalar, got {value!r}')
  v = float(arr)
  if not np.isfinite(v):
    raise ValueError(f'{name} must be finite, got {value!r}')
  if positive and not v > 0:
    raise ValueError(f'{name} must be > 0, got {value!r}')
  if nonnegative and not v >= 0:
    raise ValueError(f'{name} must be >= 0, got {value!r}')


def check_int(name: str, value, minimum: int):
  """Raises ValueError unless ``value`` is a Python/NumPy int >= ``minimum``.

  A traced integer scalar is accepted as it is.
  """
  if is_traced(value) and jnp.issubdtype(value.dtype, jnp.integer):
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f'{name} must be an int, got {value!r}')
  if value < minimum:
    raise ValueError(f'{name} must be >= {minimum}, got {value!r}')


def check_attack_args(*, eps, steps, step_size, temperature, lo, hi):
  """Validates the PGD hyper-parameters (see :func:`pgd`)."""
  check_scalar('eps', eps, nonnegative=True)
  check_int('steps', steps, 1)
  check_scalar('step_size', step_size, positive=True)
  check_scalar('temperature', temperature, positive=True)
  check_scalar('lo', lo)
  check_scalar('hi', hi)
  if not (_is_traced(lo) or _is_traced(hi)) and not float(lo) < float(hi):
    raise ValueError(f'need lo < hi, got lo={lo!r}, hi={hi!r}')


def _check_batch(x, y):
  if not hasattr(x, 'shape') or len(x.shape) < 1:
    raise ValueError(f'x must be a batched array [B, ...], got {x!r}')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f'x must be floating point, got dtype {x.dtype}')
  if not hasattr(y, 'shape') or tuple(y.shape) != (x.shape[0],):
    raise ValueError(
        f'y must have shape [B] = ({x.shape[0]},), got '
        f'{getattr(y, "shape", y)}')
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f'y must hold integer labels, got dtype {y.dtype}')


# --- the attack ---------------------------------------------------------------


def cross_entropy(logits: Array, y: Array, temperature=1.0) -> Array:
  """Per-example ``CE(softmax(logits / T), y)``: ``[B, K], [B] -> [B]``."""
  return optax.softmax_cross_entropy_with_integer_labels(logits / temperature,
                                                         y)


def _num_keys(key) -> int | None:
  """None for one key; ``B`` for a batch of ``B`` keys (typed or raw)."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.ndim == 0:
      return None
    if key.ndim == 1:
      return key.shape[0]
  elif key.ndim == 1:
    return None
  elif key.ndim == 2:
    return key.shape[0]
  raise ValueError(f'key must be one PRNG key or a [B] batch of keys, got '
                   f'shape {key.shape}')


def _random_start(key, x, eps):
  """Uniform noise in ``[-eps, eps]`` shaped like ``x``.

  With one key per example, example ``i``'s noise depends only on ``key[i]``,
  so results do not depend on how a data set is cut into batches.
  """
  if _num_keys(key) is None:
    return jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  return jax.vmap(
      lambda k: jax.random.uniform(k, x.shape[1:], x.dtype, -eps, eps))(key)


@functools.partial(
    jax.jit,
    static_argnames=('apply_fn', 'steps', 'random_start', 'targeted',
                     'keep_best'))
def _pgd_impl(apply_fn, params, x, y, key, eps, step_size, temperature, lo,
              hi, *, steps, random_start, targeted, keep_best):
  """The jitted attack; all arguments already validated.

  Only the structural options are static, so new values of eps, step size,
  temperature or box reuse the compiled attack.
  """
  dtype = x.dtype
  eps = jnp.asarray(eps, dtype)
  step_size = jnp.asarray(step_size, dtype)
  lo = jnp.asarray(lo, dtype)
  hi = jnp.asarray(hi, dtype)
  direction = -1.0 if targeted else 1.0

  def project(z):
    # Onto the eps-ball, then onto the box (if x lies in the box, the result
    # lies in both: the intersection [max(x-eps,lo), min(x+eps,hi)] is then
    # non-empty and equals this double clip).
    return jnp.clip(jnp.clip(z, x - eps, x + eps), lo, hi)

  def objective(z):
    logits = apply_fn(params, z)
    per_example = cross_entropy(logits, y, temperature)
    return jnp.sum(per_example), (per_example, logits)

  grad_fn = jax.grad(objective, has_aux=True)

  def step(z, grad):
    return project(z + direction * step_size * jnp.sign(grad).astype(dtype))

  if random_start:
    z0 = project(x + _random_start(key, x, eps))
  else:
    z0 = x

  if not keep_best:
    def body(_, z):
      grad, _ = grad_fn(z)
      return step(z, grad)
    return lax.fori_loop(0, steps, body, z0)

  # keep_best: per example, the first iterate that succeeds (misclassified,
  # or classified as the target), else the one with the best attack objective.
  def score(per_example, logits):
    pred = jnp.argmax(logits, axis=-1)
    success = (pred == y) if targeted else (pred != y)
    return success, direction * per_example

  def update_best(best, z, per_example, logits):
    best_z, best_obj, best_success = best
    success, obj = score(per_example, logits)
    better = (success & ~best_success) | (~best_success & (obj > best_obj))
    mask = better.reshape((-1,) + (1,) * (z.ndim - 1))
    return (jnp.where(mask, z, best_z), jnp.where(better, obj, best_obj),
            best_success | success)

  init_best = (z0, jnp.full(x.shape[:1], -jnp.inf, jnp.float32),
               jnp.zeros(x.shape[:1], bool))

  def body_best(_, carry):
    z, best = carry
    grad, (per_example, logits) = grad_fn(z)
    best = update_best(best, z, per_example.astype(jnp.float32), logits)
    return step(z, grad), best

  z, best = lax.fori_loop(0, steps, body_best, (z0, init_best))
  _, (per_example, logits) = objective(z)
  best = update_best(best, z, per_example.astype(jnp.float32), logits)
  return best[0]


def pgd(apply_fn: ApplyFn, params: Params, x: Array, y: Array, key: PRNGKey,
        *, eps, steps: int, step_size, random_start: bool = True,
        temperature=1.0, targeted: bool = False, keep_best: bool = False,
        lo=0.0, hi=1.0) -> Array:
  """L-infinity PGD with an optional temperature on the logits.

  .. math::
      x_{k+1} = \\Pi_{B_\\infty(x, \\epsilon) \\cap [lo, hi]^d}
                \\left(x_k \\pm a\\,\\mathrm{sign}\\,\\nabla_x
                \\mathrm{CE}(f(x_k) / T, y)\\right)

  (``+`` untargeted, ``-`` targeted), for ``steps`` steps from
  ``x_0 = Pi(x + U[-eps, eps])`` (or ``x_0 = x`` without random start). The
  gradient of a saturated softmax is zero in float32; that is intended (it is
  what a defender sees on a distilled model at ``T = 1``).

  The attack runs as one jitted program in which ``apply_fn``, ``steps``,
  ``random_start``, ``targeted`` and ``keep_best`` are static: pass the same
  (hashable) ``apply_fn`` object to reuse the compilation; new values of the
  other arguments do not recompile.

  Args:
    apply_fn: ``apply_fn(params, x[B, ...]) -> logits[B, K]``.
    params: model parameters (no gradient flows to them through the attack).
    x: clean inputs ``[B, ...]``, floating point, assumed inside ``[lo, hi]``.
    y: ``[B]`` integer labels (the true labels, or the targets if
      ``targeted``).
    key: one PRNG key, or a ``[B]`` batch of keys (one per example: the start
      of example ``i`` then depends only on ``key[i]``). Unused without random
      start.
    eps: L-inf radius ``>= 0`` (may be traced, e.g. vmapped over).
    steps: number of steps ``>= 1`` (a static Python int).
    step_size: ``a > 0`` (may be traced).
    random_start: start at a uniform point of the eps-ball (Madry et al.).
    temperature: ``T > 0`` dividing the logits in the attack loss only.
    targeted: minimise the loss towards the labels ``y`` instead.
    keep_best: return, per example, the first iterate (start included) that
      succeeds (misclassified; classified as the target if targeted), or else
      the iterate with the best loss, instead of the last iterate. The
      iterate sequence itself is the same, so it is never weaker.
    lo: lower end of the valid input range.
    hi: upper end of the valid input range.

  Returns:
    ``x_adv`` shaped and typed like ``x``, with ``|x_adv - x| <= eps`` and
    ``lo <= x_adv <= hi`` entrywise.

  Raises:
    ValueError: for ``eps < 0``, ``steps < 1`` (or not an int),
      ``step_size <= 0``, ``temperature <= 0``, ``lo >= hi``, non-floating
      ``x``, labels not shaped ``[B]`` or a wrong number of keys.

  References:
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial
    Attacks", ICLR 2018; Carlini & Wagner, "Defensive Distillation is Not
    Robust to Adversarial Examples", 2016.
  """
  check_attack_args(eps=eps, steps=steps, step_size=step_size,
                    temperature=temperature, lo=lo, hi=hi)
  _check_batch(x, y)
  if random_start:
    if key is None:
      raise ValueError('random_start=True needs a PRNG key, got key=None')
    n = _num_keys(key)
    if n is not None and n != x.shape[0]:
      raise ValueError(f'got {n} keys for a batch of {x.shape[0]} examples')
  else:
    key = None
  return _pgd_impl(apply_fn, params, x, y, key, eps, step_size, temperature,
                   lo, hi, steps=steps, random_start=bool(random_start),
                   targeted=bool(targeted), keep_best=bool(keep_best))


def fgsm(apply_fn: ApplyFn, params: Params, x: Array, y: Array, *, eps,
         temperature=1.0, targeted: bool = False, lo=0.0, hi=1.0) -> Array:
  """Fast gradient sign method: one PGD step of size ``eps``, no random start.

  .. math::
      x_{adv} = \\mathrm{clip}(x \\pm \\epsilon\\,\\mathrm{sign}\\,\\nabla_x
                \\mathrm{CE}(f(x) / T, y), lo, hi)

  Args:
    apply_fn: ``apply_fn(params, x[B, ...]) -> logits[B, K]``.
    params: model parameters.
    x: clean inputs ``[B, ...]`` in ``[lo, hi]``.
    y: ``[B]`` labels (targets if ``targeted``).
    eps: step size and radius, ``> 0``.
    temperature: ``T > 0`` dividing the logits in the loss.
    targeted: step down the loss of the target labels instead.
    lo: lower end of the valid input range.
    hi: upper end of the valid input range.

  Returns:
    ``x_adv`` like ``x``.

  References:
    Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial
    Examples", ICLR 2015.
  """
  check_scalar('eps', eps, positive=True)
  check_attack_args(eps=eps, steps=1, step_size=eps, temperature=temperature,
                    lo=lo, hi=hi)
  _check_batch(x, y)
  return _pgd_impl(apply_fn, params, x, y, None, eps, eps, temperature, lo,
                   hi, steps=1, random_start=False, targeted=bool(targeted),
                   keep_best=False)
