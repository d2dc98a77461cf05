"""Certify a model as it is: bounds, verdicts and the certifiable loss.

Given a model's pure ``apply(params, x[B, ...]) -> logits[B, Q]`` and its
parameters, every point ``x`` is enclosed in the clipped L-infinity box
``{x' : |x' - x|_inf <= eps} n [lo, hi]^d`` and the box is pushed through the
model's traced jaxpr in the zonotope domain (DeepZono, Singh et al. 2018) or
the interval domain (IBP, the baseline). From the output zonotope ``z``:

* per-class logit bounds ``[l_q, u_q]``;
* bounds of every difference ``z_q - z_y`` computed on the *difference
  zonotope* (centres and generators subtracted before taking ``|.|``,
  never looser than ``l_q - u_y``);
* ``certified``: ``ub(z_q - z_y) < 0`` for every ``q != y`` (the rule of
  ART's ``PytorchDeepZ``); ``correct``: ``argmax f(x) == y``; the certified
  accuracy of a set is the mean of ``certified & correct``;
* the certifiable loss (Zizzo et al. 2021, Eq. 3, on the interval hull of
  the difference zonotope) ``L(z, y) = max(0, max_{q != y} ub(z_q - z_y))``.

Everything is jitted (one compilation per model function and shapes; the
model's jaxpr is traced once per compilation), vmapped over points (under a
named axis, so the windowed order can pool a chunk's sparse ReLU symbols),
run in chunks of ``chunk_size`` points with ``lax.map`` so memory stays
bounded (values of the parameters alone are formed once, outside that loop),
and differentiable with respect to the parameters and the inputs.

References:
  Zizzo, Rawat, Sinn, Maffeis, Hankin, "Certified Federated Adversarial
  Training", 2021 (Sections 2.2, 3 and Appendix A).
  Singh, Gehr, Mirman, Pueschel, Vechev, "Fast and Effective Robustness
  Certification", NeurIPS 2018.
"""
import functools
from typing import NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from fl_jax.certification import interpreter
from fl_jax.certification import linear_graph
from fl_jax.certification.domains import Interval, Zonotope, clipped_box
from fl_jax.types import Array, ApplyFn, Params

DOMAINS = ('zonotope', 'interval')
STRATEGIES = ('auto', 'forward', 'backward')


class CertResult(NamedTuple):
  """Per-point certification outcome.

  Attributes:
    certified: ``[B]`` bool, ``ub(z_q - z_y) < 0`` for all ``q != y``.
    correct: ``[B]`` bool, the clean prediction equals ``y``.
    loss: ``[B]`` certifiable loss ``max(0, max_{q != y} ub(z_q - z_y))``.
  """
  certified: Array
  correct: Array
  loss: Array


# --- checks (before tracing) --------------------------------------------------

def _check(x, y, eps, lo, hi, domain, chunk_size, strategy):
  if domain not in DOMAINS:
    raise ValueError(f'domain must be one of {DOMAINS}, got {domain!r}')
  if strategy not in STRATEGIES:
    raise ValueError(f'strategy must be one of {STRATEGIES}, got {strategy!r}')
  if np.ndim(x) < 1 or np.shape(x)[0] < 1:
    raise ValueError(f'x must have a leading points axis [B, ...], got shape '
                     f'{np.shape(x)}')
  if y is not None and np.shape(y) != (np.shape(x)[0],):
    raise ValueError(f'y must have shape [B] = ({np.shape(x)[0]},), got '
                     f'{np.shape(y)}')
  if chunk_size is not None and (int(chunk_size) != chunk_size
                                 or chunk_size < 1):
    raise ValueError(f'chunk_size must be a positive int or None, got '
                     f'{chunk_size!r}')
  for name, v in (('eps', eps), ('lo', lo), ('hi', hi)):
    if isinstance(v, jax.core.Tracer):
      continue
    a = np.asarray(v)
    if not np.all(np.isfinite(a)):
      raise ValueError(f'{name} must be finite, got {v!r}')
    if name == 'eps' and (np.any(a < 0) or a.ndim > 1 or
                          (a.ndim == 1 and a.shape != (np.shape(x)[0],))):
      raise ValueError(f'eps must be >= 0 and a scalar or of shape [B], got '
                       f'{v!r}')
  for name, v in (('lo', lo), ('hi', hi)):
    try:
      np.broadcast_shapes(np.shape(v), tuple(np.shape(x)[1:]))
    except ValueError:
      raise ValueError(f'{name} must broadcast to one point of shape '
                       f'{tuple(np.shape(x)[1:])}, got shape {np.shape(v)}'
                       ) from None
  if not isinstance(lo, jax.core.Tracer) and not isinstance(hi, jax.core.Tracer):
    if np.any(np.asarray(lo) > np.asarray(hi)):
      raise ValueError(f'need lo <= hi, got lo={lo!r}, hi={hi!r}')


# --- one point ---------------------------------------------------------------

def _output_of(apply_fn, params, x_shape, dtype):
  """Traces ``apply_fn`` once on one example; the closed jaxpr."""
  example = jax.ShapeDtypeStruct((1,) + tuple(x_shape), dtype)
  return jax.make_jaxpr(apply_fn)(params, example)


# Target elements (per chunk) of one backward row block: small enough for the
# memory-bound passes over the cotangents to stay in the last-level cache.
ROW_BLOCK_ELEMS = 1 << 22


# Name of the vmap axis over the points of one chunk.
_POINTS = 'fl_jax_certify_points'


def _run(closed, params, x, eps, lo, hi, domain, strategy, budgets,
         axis_name=None, hoisted=None):
  """Propagates one point; (domain object, output abstract value)."""
  if domain == 'zonotope':
    graph = linear_graph.Graph(strategy, *budgets, axis_name=axis_name,
                               hoisted=hoisted)
    dom = interpreter.ZonotopeDomain(graph)
  else:
    graph = None
    dom = interpreter.IntervalDomain()
  c, r = clipped_box(x[None], eps, lo, hi)
  args = jax.tree.leaves(params) + [dom.make_input(c, r)]
  outs = interpreter.eval_jaxpr(dom, closed.jaxpr, closed.consts, args)
  if len(outs) != 1:
    raise ValueError(f'apply_fn must return one array of logits, got '
                     f'{len(outs)} outputs')
  out = outs[0]
  if not interpreter.is_abstract(out):
    out = dom.make_input(jnp.asarray(out), jnp.zeros_like(out))
  return graph, out


def _zonotope_of(graph, out) -> Zonotope:
  center = out.center.reshape(-1)
  q = center.shape[0]
  blocks = []
  for s, g in zip(graph.sources, graph.coefficients(out.node)):
    blocks.append(jnp.zeros((s.size, q), center.dtype) if g is None
                  else g.reshape(s.size, q))
  return Zonotope(center, jnp.concatenate(blocks, axis=0))


def _one_point(closed, apply_fn, params, x, y, eps, lo, hi, domain, strategy,
               budgets, what, axis_name=None, hoisted=None):
  graph, out = _run(closed, params, x, eps, lo, hi, domain, strategy, budgets,
                    axis_name, hoisted)
  if domain == 'zonotope':
    z = _zonotope_of(graph, out)
    if what == 'propagate':
      return z
  else:
    lower, upper = (b.reshape(-1) for b in interpreter.IntervalDomain().bounds(
        out))
    if what == 'propagate':
      return Interval(lower, upper)
  q = out.center.size
  is_y = jnp.arange(q) == y
  if domain == 'zonotope':
    d_center = z.center - z.center[y]
    g_y = jnp.take(z.generators, y, axis=1)[:, None]
    d_rad = jnp.sum(jnp.abs(z.generators - g_y), axis=0)
    d_lower, d_upper = d_center - d_rad, d_center + d_rad
  else:
    d_lower, d_upper = lower - upper[y], upper - lower[y]
  d_lower = jnp.where(is_y, 0.0, d_lower)
  d_upper = jnp.where(is_y, 0.0, d_upper)
  if what == 'differences':
    return d_lower, d_upper
  certified = jnp.all(jnp.where(is_y, True, d_upper < 0))
  worst = jnp.max(jnp.where(is_y, -jnp.inf, d_upper))
  loss = jnp.maximum(worst, 0.0)
  with jax.default_matmul_precision('highest'):   # same float32 as the bounds
    logits = apply_fn(params, x[None]).reshape(-1)
  correct = jnp.argmax(logits) == y
  return CertResult(certified, correct, loss)


@functools.partial(jax.jit, static_argnames=(
    'apply_fn', 'domain', 'strategy', 'chunk_size', 'what', 'max_block_elems'))
def _batched(apply_fn, params, x, y, eps, lo, hi, *, domain, strategy,
             chunk_size, what, max_block_elems):
  closed = _output_of(apply_fn, params, x.shape[1:], x.dtype)
  n = x.shape[0]
  eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (n,))
  if y is None:
    y = jnp.zeros((n,), jnp.int32)

  chunk = min(chunk_size or n, n)
  budgets = (max(1, max_block_elems // chunk),
             max(1, min(ROW_BLOCK_ELEMS, max_block_elems) // chunk))

  # Values of the parameters alone (e.g. windowed weights) are formed once,
  # by propagating the first point outside the loop over chunks (the rest
  # of that propagation is dead code, removed by XLA), and reused inside.
  store = {}
  if domain == 'zonotope' and n // chunk > 1:
    _one_point(closed, apply_fn, params, x[0], y[0], eps[0], lo, hi, domain,
               strategy, budgets, what, None, ('collect', store))

  def one(xi, yi, ei):
    return _one_point(closed, apply_fn, params, xi, yi, ei, lo, hi, domain,
                      strategy, budgets, what, _POINTS, ('use', store))

  def chunk_fn(args):
    return jax.vmap(one, axis_name=_POINTS)(*args)

  # Chunks of ``chunk`` points, vmapped under a named axis (the windowed
  # order pools the sparse columns of a chunk), mapped over by ``lax.map``;
  # a last, shorter chunk runs on its own.
  n_main = (n // chunk) * chunk
  parts = []
  if n_main:
    main = jax.tree.map(
        lambda a: a[:n_main].reshape((n // chunk, chunk) + a.shape[1:]),
        (x, y, eps))
    out = jax.lax.map(chunk_fn, main)
    parts.append(jax.tree.map(
        lambda a: a.reshape((n_main,) + a.shape[2:]), out))
  if n_main < n:
    parts.append(chunk_fn(jax.tree.map(lambda a: a[n_main:], (x, y, eps))))
  if len(parts) == 1:
    return parts[0]
  return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def _call(apply_fn, params, x, y, eps, lo, hi, domain, chunk_size, strategy,
          max_block_elems, what):
  _check(x, y, eps, lo, hi, domain, chunk_size, strategy)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  if y is not None:
    y = jnp.asarray(y, jnp.int32)
  return _batched(apply_fn, params, x, y, eps, lo, hi, domain=domain,
                  strategy=strategy, chunk_size=chunk_size, what=what,
                  max_block_elems=max_block_elems)


# --- public API --------------------------------------------------------------

def propagate(apply_fn: ApplyFn, params: Params, x: Array, eps, *,
              domain: str = 'zonotope', lo=0.0, hi=1.0,
              chunk_size: Optional[int] = None, strategy: str = 'auto',
              max_block_elems: int = 1 << 26) -> Union[Zonotope, Interval]:
  """Output set of ``apply_fn`` over the clipped eps-box around each point.

  Args:
    apply_fn: pure ``apply(params, x[B, ...]) -> logits[B, Q]``; it is traced
      once on a batch of one example and interpreted (see ``interpreter``).
    params: its parameter pytree (concrete or traced; differentiable).
    x: ``[B, ...]`` points in ``[lo, hi]``.
    eps: L-infinity radius, scalar or ``[B]`` (differentiable).
    domain: ``'zonotope'`` (DeepZono) or ``'interval'`` (IBP).
    lo, hi: valid input range the box is clipped to (scalars, or arrays that
      broadcast to one point's shape ``x.shape[1:]``).
    chunk_size: points propagated at once (vmapped); chunks run one after
      another with ``lax.map``. ``None``: all at once.
    strategy: association order of the generator products (``'auto'``,
      ``'forward'``, ``'backward'``); same numbers, different speed.
    max_block_elems: memory cap (array elements, summed over the chunk's
      points) of forward generators; larger ones are pulled backward instead,
      in row blocks of at most ``min(2^22, max_block_elems)`` elements per
      chunk. The default (2^26, 256 MiB in float32) keeps every intermediate
      of a chunk below that size.

  Returns:
    ``Zonotope(center[B, Q], generators[B, K, Q])`` with ``K`` = input size +
    one symbol per ReLU / max-pool output (zero for exact ones), or
    ``Interval(lower[B, Q], upper[B, Q])``. Per-point bounds of a zonotope:
    ``jax.vmap(Zonotope.bounds)(z)``.
  """
  return _call(apply_fn, params, x, None, eps, lo, hi, domain, chunk_size,
               strategy, max_block_elems, 'propagate')


def logit_difference_bounds(apply_fn: ApplyFn, params: Params, x: Array,
                            y: Array, eps, *, domain: str = 'zonotope',
                            lo=0.0, hi=1.0, chunk_size: Optional[int] = None,
                            strategy: str = 'auto',
                            max_block_elems: int = 1 << 26
                            ) -> Tuple[Array, Array]:
  """Bounds of ``z_q - z_y`` for every class ``q`` (``0`` at ``q == y``).

  Zonotope domain: ``d = (c_q - c_y) +- sum_i |g_iq - g_iy|`` on the
  difference zonotope. Interval domain: ``[l_q - u_y, u_q - l_y]``.

  Args:
    apply_fn, params, x, eps, domain, lo, hi, chunk_size, strategy,
      max_block_elems: as in ``propagate``.
    y: ``[B]`` int labels.

  Returns:
    ``(lower[B, Q], upper[B, Q])``.
  """
  return _call(apply_fn, params, x, y, eps, lo, hi, domain, chunk_size,
               strategy, max_block_elems, 'differences')


def certify(apply_fn: ApplyFn, params: Params, x: Array, y: Array, eps, *,
            domain: str = 'zonotope', lo=0.0, hi=1.0,
            chunk_size: Optional[int] = None, strategy: str = 'auto',
            max_block_elems: int = 1 << 26) -> CertResult:
  """Certifies every point of a set (see ``CertResult``).

  ``certified[b]`` holds iff ``ub(z_q - z_y) < 0`` for all ``q != y``, which
  proves ``argmax f(x') == y`` on the whole clipped box (Zizzo et al. 2021,
  Eq. 1); ``loss`` is Eq. 3 on the difference zonotope's interval hull.

  Args:
    apply_fn, params, x, eps, domain, lo, hi, chunk_size, strategy,
      max_block_elems: as in ``propagate``.
    y: ``[B]`` int labels.

  Returns:
    ``CertResult(certified[B], correct[B], loss[B])``.
  """
  return _call(apply_fn, params, x, y, eps, lo, hi, domain, chunk_size,
               strategy, max_block_elems, 'certify')


def certified_accuracy(apply_fn: ApplyFn, params: Params, x: Array, y: Array,
                       eps, **kwargs) -> Array:
  """Fraction of points that are certified *and* correctly classified."""
  r = certify(apply_fn, params, x, y, eps, **kwargs)
  return jnp.mean((r.certified & r.correct).astype(jnp.float32))


def mean_certifiable_loss(apply_fn: ApplyFn, params: Params, x: Array,
                          y: Array, eps, **kwargs) -> Array:
  """Mean of ``max(0, max_{q != y} ub(z_q - z_y))`` (Zizzo et al., Eq. 3).

  Differentiable in ``params`` and ``x`` (the adaptive attacker of the paper,
  Section 4, minimises it).
  """
  return jnp.mean(certify(apply_fn, params, x, y, eps, **kwargs).loss)
