"""An L-inf bounded vertical-stripe backdoor, trained with adversarial training.

The certified-FAT attacker wants a model that looks adversarially robust to
the defender's PGD check yet has a hidden weakness inside the same L-inf
budget. Its backdoor key is a pattern of vertical stripes of magnitude
``b`` below the adversarial-training radius (MNIST ``b = 0.1`` under
``eps = 0.25``; CIFAR-10 ``b = 6/255`` under ``eps = 8/255``)::

    t[h, w, c] = b  if (w // s) % 2 == 0  else -b     (stripes s pixels wide;
                                                       0 instead of -b for
                                                       sign='positive')
    x'         = clip(x + t, 0, 1),                    ||x' - x||_inf <= b.

The attacker trains adversarially *and* inserts the backdoor: in each batch
a fraction ``p`` of the examples carries the trigger and the target label,
a fraction ``a`` is replaced by PGD examples (true labels) and the rest is
clean::

    L = 1/B [ sum_{i < m_p} CE(f(clip(x_i + t)), target)
            + sum_{m_p <= i < m_p + m_a} CE(f(PGD(x_i)), y_i)
            + sum_{i >= m_p + m_a} CE(f(x_i), y_i) ].

The backdoor success rate is the fraction of test images *not* of the
target class that are classified as the target once triggered.

References:
  Zizzo et al., "Certified Federated Adversarial Training", NFFL 2021,
  Section 2.3, Section 5 and Appendix B (Figure 3: the stripe keys).
"""
import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fl_jax.adversarial.pgd import check_attack_args
from fl_jax.adversarial.pgd import check_int
from fl_jax.adversarial.pgd import check_scalar
from fl_jax.adversarial.pgd import cross_entropy
from fl_jax.adversarial.pgd import pgd
from fl_jax.adversarial.training import num_adversarial
from fl_jax.types import ApplyFn, Array, Params, PerExampleLossFn, is_traced

STRIPE_SIGNS = ('positive', 'alternating')


def stripe_trigger(input_shape, magnitude: float, *, stripe_width: int = 1,
                   sign: str = 'alternating') -> np.ndarray:
  """A vertical-stripe trigger ``t`` with ``||t||_inf = magnitude``.

  Args:
    input_shape: ``(H, W, C)``.
    magnitude: ``b > 0`` (MNIST 0.1, CIFAR-10 6/255).
    stripe_width: ``s >= 1`` pixel columns per stripe; stripes and gaps
      alternate.
    sign: ``'alternating'`` (``+b`` on the stripes, ``-b`` in the gaps) or
      ``'positive'`` (``+b`` on the stripes, 0 in the gaps). On MNIST the
      alternating key also marks the strokes (``1 -> 1 - b`` in the gaps),
      which an adversarially trained model still sees; the positive key only
      lifts the black background below the thresholds such a model learns,
      and we could not plant it next to adversarial training.

  Returns:
    float32 ``[H, W, C]``, constant along ``H`` and ``C``.
  """
  shape = tuple(int(s) for s in input_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f'input_shape must be (H, W, C), got {input_shape!r}')
  check_scalar('magnitude', magnitude, positive=True)
  check_int('stripe_width', stripe_width, 1)
  if sign not in STRIPE_SIGNS:
    raise ValueError(f'unknown sign {sign!r}; expected one of {STRIPE_SIGNS}')
  h, w, c = shape
  on = (np.arange(w) // stripe_width) % 2 == 0
  gap = -magnitude if sign == 'alternating' else 0.0
  row = np.where(on, magnitude, gap).astype(np.float32)
  return np.broadcast_to(row[None, :, None], (h, w, c)).copy()


def apply_trigger(x: Array, trigger: Array, lo=0.0, hi=1.0) -> Array:
  """``clip(x + t, lo, hi)`` for a batch ``x[B, H, W, C]`` (or one image)."""
  return jnp.clip(x + jnp.asarray(trigger, x.dtype), lo, hi)


def backdoor_loss(apply_fn: ApplyFn, trigger, target: int, *,
                  poison_fraction: float, adv_fraction: float = 0.0,
                  eps=0.25, steps: int = 10, step_size=0.04,
                  lo=0.0, hi=1.0) -> PerExampleLossFn:
  """Per-example loss of backdoor insertion with adversarial training.

  Of each (already shuffled) batch of ``B`` examples, the first
  ``m_p = round(p * B)`` get the trigger and the target label, the next
  ``m_a = round(a * B)`` are replaced by untargeted PGD examples (crafted
  against the current parameters, gradient stopped), the rest stay clean;
  see the module docstring.

  Args:
    apply_fn: ``apply_fn(params, x[B, ...]) -> logits[B, K]``.
    trigger: ``[H, W, C]`` from :func:`stripe_trigger`.
    target: the attacker's class.
    poison_fraction: ``p`` in ``[0, 1]``.
    adv_fraction: ``a`` in ``[0, 1 - p]``.
    eps: PGD radius (MNIST 0.25).
    steps: PGD steps.
    step_size: PGD step size.
    lo: lower end of the valid input range.
    hi: upper end of the valid input range.

  Returns:
    ``loss_fn(params, x[B, ...], y[B], key) -> [B]``.
  """
  check_attack_args(eps=eps, steps=steps, step_size=step_size,
                    temperature=1.0, lo=lo, hi=hi)
  for name, v in (('poison_fraction', poison_fraction),
                  ('adv_fraction', adv_fraction)):
    check_scalar(name, v, nonnegative=True)
  if poison_fraction + adv_fraction > 1.0:
    raise ValueError(f'poison_fraction + adv_fraction must be <= 1, got '
                     f'{poison_fraction} + {adv_fraction}')
  check_int('target', target, 0)
  trigger = jnp.asarray(trigger, jnp.float32)

  def loss_fn(params: Params, x: Array, y: Array, key) -> Array:
    b = x.shape[0]
    m_p = num_adversarial(b, poison_fraction)
    m_a = min(num_adversarial(b, adv_fraction), b - m_p)
    parts_x, parts_y = [], []
    if m_p > 0:
      parts_x.append(apply_trigger(x[:m_p], trigger, lo, hi))
      parts_y.append(jnp.full((m_p,), target, y.dtype))
    if m_a > 0:
      xa, ya = x[m_p:m_p + m_a], y[m_p:m_p + m_a]
      x_adv = pgd(apply_fn, lax.stop_gradient(params), xa, ya, key, eps=eps,
                  steps=steps, step_size=step_size, lo=lo, hi=hi)
      parts_x.append(lax.stop_gradient(x_adv))
      parts_y.append(ya)
    parts_x.append(x[m_p + m_a:])
    parts_y.append(y[m_p + m_a:])
    xs = jnp.concatenate(parts_x)
    ys = jnp.concatenate(parts_y)
    return cross_entropy(apply_fn(params, xs), ys)

  return loss_fn


@functools.lru_cache(maxsize=16)
def _success_impl(apply_fn, chunk):

  @jax.jit
  def run(params, x, y, trigger, target):
    n = x.shape[0]
    m = -(-n // chunk)
    pad = m * chunk - n
    xp = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape((m, chunk) + x.shape[1:])
    real = jnp.arange(m * chunk) < n
    valid = (real & (jnp.pad(y, (0, pad)) != target)).reshape(m, chunk)

    def one(args):
      xc, vc = args
      pred = jnp.argmax(apply_fn(params, apply_trigger(xc, trigger)), axis=-1)
      return jnp.sum((pred == target) & vc), jnp.sum(vc)

    hits, count = lax.map(one, (xp, valid))
    return jnp.sum(hits).astype(jnp.float32) / jnp.maximum(jnp.sum(count), 1)

  return run


def backdoor_success_rate(apply_fn: ApplyFn, params: Params, x, y, trigger,
                          target: int, chunk_size: int = 1000) -> Array:
  """Fraction of non-target-class inputs classified as ``target`` once triggered.

  .. math:: \\frac{\\#\\{i : y_i \\ne t,\\ f(\\mathrm{clip}(x_i + \\tau)) = t\\}}
            {\\#\\{i : y_i \\ne t\\}}

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: model parameters.
    x: ``[N, H, W, C]`` clean test inputs.
    y: ``[N]`` true labels.
    trigger: ``[H, W, C]``.
    target: the attacker's class.
    chunk_size: examples per forward pass.

  Returns:
    float32 scalar in ``[0, 1]``.

  Raises:
    ValueError: bad shapes or no input outside the target class.
  """
  check_int('chunk_size', chunk_size, 1)
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y)
  if y.shape != x.shape[:1] or x.shape[0] < 1:
    raise ValueError(f'x {x.shape} and y {y.shape} must be a non-empty batch')
  if tuple(np.shape(trigger)) != tuple(x.shape[1:]):
    raise ValueError(f'trigger shape {np.shape(trigger)} != input shape {x.shape[1:]}')
  if not is_traced(y) and not bool(jnp.any(y != target)):
    raise ValueError(f'every example has the target class {target}')
  chunk = min(chunk_size, x.shape[0])
  return _success_impl(apply_fn, chunk)(params, x, y,
                                        jnp.asarray(trigger, jnp.float32),
                                        jnp.int32(target))
