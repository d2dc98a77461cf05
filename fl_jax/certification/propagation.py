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

``certificate`` returns all of these from one propagation; ``certify``,
``logit_difference_bounds`` and ``propagate`` return parts of it.

Everything is jitted (one compilation per model function, point shape and
bucket of point counts; the model's jaxpr is traced once per compilation),
vmapped over points (under a named axis, so the windowed order can pool a
chunk's sparse ReLU symbols), run in chunks with ``lax.map`` so memory stays
bounded, and differentiable with respect to the parameters and the inputs.

Chunking (``chunk_size=None``): the plan of one point is formed first (see
``explain``); the chunk is the largest that keeps every intermediate of the
orders that cannot block their work (windowed blocks, kept local rows,
forward generators, colours) within ``max_block_elems`` elements for the
whole chunk, at most ``tuning.Tuning.max_chunk`` points, balanced over the
chunks. The number of points is padded (repeating the last point) to a
bucket ``m * 2^e`` with ``16 <= m < 32`` (at most 6.25 % more points), so a
new number of points in the same bucket, a Python float or a JAX scalar
``eps``, reuse the compiled program.

References:
  Zizzo, Rawat, Sinn, Maffeis, Hankin, "Certified Federated Adversarial
  Training", 2021 (Sections 2.2, 3 and Appendix A).
  Singh, Gehr, Mirman, Pueschel, Vechev, "Fast and Effective Robustness
  Certification", NeurIPS 2018.
"""
import functools
from typing import List, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from fl_jax.certification import interpreter
from fl_jax.certification import linear_graph
from fl_jax.certification import planner
from fl_jax.certification import tuning as tuning_lib
from fl_jax.certification.domains import Interval, Zonotope, clipped_box
from fl_jax.types import Array, ApplyFn, Params

DOMAINS = ('zonotope', 'interval')
STRATEGIES = planner.STRATEGIES

# Name of the vmap axis over the points of one chunk.
_POINTS = 'fl_jax_certify_points'


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


class Certificate(NamedTuple):
  """Verdicts and bounds of every point, from one propagation.

  The difference bounds at ``q == y`` are ``0`` (the difference ``z_y -
  z_y`` is exactly zero), so ``diff_upper.max(1) < 0`` is never true; mask
  the label out, or use ``margin_upper()`` (``-inf`` at ``q == y``, as
  ART's ``PytorchDeepZ`` does).

  Attributes:
    certified: ``[B]`` bool, ``ub(z_q - z_y) < 0`` for all ``q != y``.
    correct: ``[B]`` bool, the clean prediction equals ``y``.
    loss: ``[B]`` certifiable loss ``max(0, max_{q != y} ub(z_q - z_y))``.
    diff_lower, diff_upper: ``[B, Q]`` bounds of ``z_q - z_y`` (on the
      difference zonotope; ``0`` at ``q == y``).
    logit_lower, logit_upper: ``[B, Q]`` bounds of every logit ``z_q``.
    label: ``[B]`` the labels ``y``.
  """
  certified: Array
  correct: Array
  loss: Array
  diff_lower: Array
  diff_upper: Array
  logit_lower: Array
  logit_upper: Array
  label: Array

  def margin_upper(self) -> Array:
    """``diff_upper`` with ``-inf`` at ``q == y``: ``[B, Q]``."""
    q = self.diff_upper.shape[-1]
    is_y = jnp.arange(q)[None, :] == self.label[:, None]
    return jnp.where(is_y, -jnp.inf, self.diff_upper)


class Options(NamedTuple):
  """Static settings of one compiled certification (hashable).

  Attributes:
    domain: ``'zonotope'`` or ``'interval'``.
    strategy: ``'auto'`` or an order's name (``planner.ORDER_NAMES``).
    chunk_size: points per chunk (resolved; a last chunk may be shorter).
    max_block_elems: memory budget of a chunk (array elements).
    labels: the call has labels (a ``Certificate``) or not (the output
      set, ``propagate``).
  """
  domain: str = 'zonotope'
  strategy: str = 'auto'
  chunk_size: int = 1
  max_block_elems: int = 1 << 26
  labels: bool = True


class Plan(NamedTuple):
  """The association orders of a certification, per bound query.

  Attributes:
    chunk_size: points per chunk.
    num_points: points after padding to the bucket (``num_points`` asked).
    budget: memory budget per point of a chunk (elements).
    queries: one ``planner.QueryPlan`` per bound query of one point, in
      order (ReLU / max-pool inputs, then the output).
  """
  chunk_size: int
  num_points: int
  budget: int
  queries: Tuple[planner.QueryPlan, ...]

  def __str__(self):
    return planner.format_plans(
        list(self.queries),
        f'plan: {self.num_points} points in chunks of {self.chunk_size}, '
        f'budget {self.budget} elements per point')


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


def _check_labels(y, num_classes: int):
  """Raises if a concrete label is outside ``[0, num_classes)``."""
  if y is None or isinstance(y, jax.core.Tracer):
    return
  a = np.asarray(y)
  if not np.issubdtype(a.dtype, np.integer):
    if np.any(a != np.round(a)):
      raise ValueError(f'labels y must be integers, got {a!r}')
  bad = np.flatnonzero((a < 0) | (a >= num_classes))
  if bad.size:
    i = int(bad[0])
    raise ValueError(
        f'label y[{i}] = {a.reshape(-1)[i]} is outside [0, {num_classes}) '
        f'(the model has {num_classes} classes); {bad.size} bad label(s) at '
        f'indices {bad[:10].tolist()}')


# --- one point ---------------------------------------------------------------

def _output_of(apply_fn, params, x_shape, dtype):
  """Traces ``apply_fn`` once on one example; the closed jaxpr."""
  example = jax.ShapeDtypeStruct((1,) + tuple(x_shape), dtype)
  return jax.make_jaxpr(apply_fn)(params, example)


def _run(closed, params, x, eps, lo, hi, domain, budget):
  """Propagates one point; (graph or None, output abstract value)."""
  if domain == 'zonotope':
    graph = linear_graph.Graph(budget)
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


def _one_point(closed, apply_fn, params, x, y, eps, lo, hi, opts: Options,
               budget: linear_graph.Budget):
  """Output set (``opts.labels`` False) or ``Certificate`` of one point."""
  graph, out = _run(closed, params, x, eps, lo, hi, opts.domain, budget)
  if opts.domain == 'zonotope':
    z = _zonotope_of(graph, out)
    if not opts.labels:
      return z
    lower, upper = z.bounds()
  else:
    lower, upper = (b.reshape(-1) for b in interpreter.IntervalDomain().bounds(
        out))
    if not opts.labels:
      return Interval(lower, upper)
  q = out.center.size
  is_y = jnp.arange(q) == y
  if opts.domain == 'zonotope':
    d_center = z.center - z.center[y]
    g_y = jnp.take(z.generators, y, axis=1)[:, None]
    d_rad = jnp.sum(jnp.abs(z.generators - g_y), axis=0)
    d_lower, d_upper = d_center - d_rad, d_center + d_rad
  else:
    d_lower, d_upper = lower - upper[y], upper - lower[y]
  d_lower = jnp.where(is_y, 0.0, d_lower)
  d_upper = jnp.where(is_y, 0.0, d_upper)
  certified = jnp.all(jnp.where(is_y, True, d_upper < 0))
  worst = jnp.max(jnp.where(is_y, -jnp.inf, d_upper))
  loss = jnp.maximum(worst, 0.0)
  with jax.default_matmul_precision('highest'):   # same float32 as the bounds
    logits = apply_fn(params, x[None]).reshape(-1)
  correct = jnp.argmax(logits) == y
  return Certificate(certified, correct, loss, d_lower, d_upper, lower, upper,
                     y)


def _budget(opts: Options, chunk: int, axis_name=None) -> linear_graph.Budget:
  """Per-point budgets of a chunk of ``chunk`` points."""
  knobs = tuning_lib.get()
  return linear_graph.Budget(
      opts.strategy, max(1, opts.max_block_elems // chunk),
      max(1, min(knobs.row_block_elems, opts.max_block_elems) // chunk),
      axis_name, knobs)


@functools.partial(jax.jit, static_argnames=('apply_fn', 'opts'))
def _batched(apply_fn, params, x, y, eps, lo, hi, *, opts: Options):
  closed = _output_of(apply_fn, params, x.shape[1:], x.dtype)
  n, chunk = x.shape[0], opts.chunk_size
  budget = _budget(opts, chunk, _POINTS)

  def one(xi, yi, ei):
    return _one_point(closed, apply_fn, params, xi, yi, ei, lo, hi, opts,
                      budget)

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


# --- planning and chunking -----------------------------------------------------

def _avals(tree):
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((tuple(np.shape(a)), jnp.result_type(a))
                        for a in leaves)


@functools.lru_cache(maxsize=128)
def _plan_of_one_point(apply_fn, treedef, leaves, x_shape, dtype, lo_shape,
                       hi_shape, opts: Options, chunk: int = 1):
  """``(query plans, number of classes)`` of one point of a ``chunk``.

  Traced abstractly (``jax.eval_shape``), once per model, shapes, options
  and chunk size.
  """
  params = jax.tree.unflatten(
      treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])
  plans: List[planner.QueryPlan] = []

  def dry(p, x, eps, lo, hi):
    closed = _output_of(apply_fn, p, x_shape, dtype)
    graph, out = _run(closed, p, x, eps, lo, hi, opts.domain,
                      _budget(opts, chunk))
    if graph is not None:
      plans.extend(graph.plans)
    return out.center

  out = jax.eval_shape(dry, params, jax.ShapeDtypeStruct(x_shape, dtype),
                       jax.ShapeDtypeStruct((), dtype),
                       jax.ShapeDtypeStruct(lo_shape, dtype),
                       jax.ShapeDtypeStruct(hi_shape, dtype))
  return tuple(plans), int(np.prod(out.shape))


def _bucket(n: int) -> int:
  """``n`` rounded up to ``m * 2^e`` with ``16 <= m < 32`` (``n`` if ``<= 16``)."""
  step = 1 << max(0, n.bit_length() - 5)
  return -(-n // step) * step


def _chunking(n: int, chunk_size: Optional[int], rigid: int,
              max_block_elems: int) -> Tuple[int, int]:
  """``(chunk, padded number of points)`` for ``n`` points.

  The points are padded to ``n``'s bucket. ``chunk_size`` given: that size
  (at most the bucket; a last, shorter chunk runs on its own). Else the
  largest chunk whose rigid intermediates (``rigid`` elements per point)
  fit ``max_block_elems``, at most ``Tuning.max_chunk``, balanced over the
  chunks of the bucket.
  """
  nb = _bucket(n)
  if chunk_size is not None:
    return min(int(chunk_size), nb), nb
  cap = min(tuning_lib.get().max_chunk,
            max(1, max_block_elems // max(rigid, 1)))
  chunk = -(-nb // -(-nb // cap))
  return chunk, -(-nb // chunk) * chunk


def _prepare(apply_fn, params, x, y, eps, *, lo, hi, domain, chunk_size,
             strategy, max_block_elems, labels):
  """Checks, plans and pads a call; ``(args, opts, plans, n)``."""
  _check(x, y, eps, lo, hi, domain, chunk_size, strategy)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  lo, hi = jnp.asarray(lo, x.dtype), jnp.asarray(hi, x.dtype)
  opts = Options(domain, strategy, 1, int(max_block_elems), labels)
  treedef, leaves = _avals(params)
  plans, num_classes = _plan_of_one_point(
      apply_fn, treedef, leaves, tuple(x.shape[1:]), x.dtype,
      tuple(lo.shape), tuple(hi.shape), opts)
  _check_labels(y, num_classes)
  n = x.shape[0]
  chunk, n_pad = _chunking(n, chunk_size, planner.rigid_mem(list(plans)),
                           opts.max_block_elems)
  opts = opts._replace(chunk_size=chunk)
  y = (jnp.zeros((n,), jnp.int32) if y is None
       else jnp.asarray(y).astype(jnp.int32))
  eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (n,))

  def pad(a):
    if n_pad == n:
      return a
    return jnp.concatenate([a, jnp.repeat(a[-1:], n_pad - n, axis=0)])
  return (pad(x), pad(y), pad(eps), lo, hi), opts, plans, n


def _call(apply_fn, params, x, y, eps, **settings):
  """``_batched`` on the padded points; the padding cut off again.

  ``settings``: ``lo``, ``hi``, ``domain``, ``chunk_size``, ``strategy``,
  ``max_block_elems``, ``labels`` (see ``_prepare``).
  """
  args, opts, _, n = _prepare(apply_fn, params, x, y, eps, **settings)
  out = _batched(apply_fn, params, *args, opts=opts)
  if args[0].shape[0] == n:
    return out
  return jax.tree.map(lambda a: a[:n], out)


# --- public API --------------------------------------------------------------

_MAX_BLOCK = tuning_lib.Tuning().max_block_elems


def propagate(apply_fn: ApplyFn, params: Params, x: Array, eps, *,
              domain: str = 'zonotope', lo=0.0, hi=1.0,
              chunk_size: Optional[int] = None, strategy: str = 'auto',
              max_block_elems: int = _MAX_BLOCK) -> Union[Zonotope, Interval]:
  """Output set of ``apply_fn`` over the clipped eps-box around each point.

  Args:
    apply_fn: pure ``apply(params, x[B, ...]) -> logits[B, Q]``; it is traced
      once on a batch of one example and interpreted (see ``interpreter``).
    params: its parameter pytree (concrete or traced; differentiable).
    x: ``[B, ...]`` points in ``[lo, hi]``.
    eps: L-infinity radius, scalar (Python or JAX) or ``[B]``
      (differentiable).
    domain: ``'zonotope'`` (DeepZono) or ``'interval'`` (IBP).
    lo, hi: valid input range the box is clipped to (scalars, or arrays that
      broadcast to one point's shape ``x.shape[1:]``).
    chunk_size: points propagated at once (vmapped); chunks run one after
      another with ``lax.map``. ``None``: chosen from the plan and
      ``max_block_elems`` (see the module docstring).
    strategy: association order of the generator products: ``'auto'`` (the
      planner's pick per bound query) or one of ``planner.ORDER_NAMES``
      (``'forward'``, ``'backward'``, ``'colouring'``, ``'local'``,
      ``'windowed'``), forced wherever it applies; same numbers, different
      speed. ``explain`` prints the plan.
    max_block_elems: memory budget of a chunk (array elements, summed over
      its points) of any intermediate of an order that cannot block its
      work; orders that can (backward, local pulls) use row blocks of at
      most ``min(2^22, max_block_elems)`` elements per chunk. The default
      (2^26, 256 MiB in float32) keeps every intermediate of a chunk below
      that size.

  Returns:
    ``Zonotope(center[B, Q], generators[B, K, Q])`` with ``K`` = input size +
    one symbol per ReLU / max-pool output (zero for exact ones), or
    ``Interval(lower[B, Q], upper[B, Q])``. Per-point bounds of a zonotope:
    ``jax.vmap(Zonotope.bounds)(z)``.
  """
  return _call(apply_fn, params, x, None, eps, lo=lo, hi=hi, domain=domain,
               chunk_size=chunk_size, strategy=strategy,
               max_block_elems=max_block_elems, labels=False)


def certificate(apply_fn: ApplyFn, params: Params, x: Array, y: Array, eps,
                *, domain: str = 'zonotope', lo=0.0, hi=1.0,
                chunk_size: Optional[int] = None, strategy: str = 'auto',
                max_block_elems: int = _MAX_BLOCK) -> Certificate:
  """Verdicts, difference bounds and logit bounds from one propagation.

  Args:
    apply_fn, params, x, eps, domain, lo, hi, chunk_size, strategy,
      max_block_elems: as in ``propagate``.
    y: ``[B]`` int labels in ``[0, Q)`` (checked when concrete).

  Returns:
    A ``Certificate`` (see its docstring for ``q == y``).

  Example:
    >>> c = certificate(model.apply, params, x, y, 0.05)
    >>> c.certified.mean(), c.margin_upper().max(1), c.logit_upper
  """
  return _call(apply_fn, params, x, y, eps, lo=lo, hi=hi, domain=domain,
               chunk_size=chunk_size, strategy=strategy,
               max_block_elems=max_block_elems, labels=True)


def logit_difference_bounds(apply_fn: ApplyFn, params: Params, x: Array,
                            y: Array, eps, *, domain: str = 'zonotope',
                            lo=0.0, hi=1.0, chunk_size: Optional[int] = None,
                            strategy: str = 'auto',
                            max_block_elems: int = _MAX_BLOCK
                            ) -> Tuple[Array, Array]:
  """Bounds of ``z_q - z_y`` for every class ``q`` (``0`` at ``q == y``).

  Zonotope domain: ``d = (c_q - c_y) +- sum_i |g_iq - g_iy|`` on the
  difference zonotope. Interval domain: ``[l_q - u_y, u_q - l_y]``.

  Args:
    apply_fn, params, x, eps, domain, lo, hi, chunk_size, strategy,
      max_block_elems: as in ``propagate``.
    y: ``[B]`` int labels in ``[0, Q)``.

  Returns:
    ``(lower[B, Q], upper[B, Q])``.
  """
  c = certificate(apply_fn, params, x, y, eps, domain=domain, lo=lo, hi=hi,
                  chunk_size=chunk_size, strategy=strategy,
                  max_block_elems=max_block_elems)
  return c.diff_lower, c.diff_upper


def certify(apply_fn: ApplyFn, params: Params, x: Array, y: Array, eps, *,
            domain: str = 'zonotope', lo=0.0, hi=1.0,
            chunk_size: Optional[int] = None, strategy: str = 'auto',
            max_block_elems: int = _MAX_BLOCK) -> CertResult:
  """Certifies every point of a set (see ``CertResult``).

  ``certified[b]`` holds iff ``ub(z_q - z_y) < 0`` for all ``q != y``, which
  proves ``argmax f(x') == y`` on the whole clipped box (Zizzo et al. 2021,
  Eq. 1); ``loss`` is Eq. 3 on the difference zonotope's interval hull.

  Args:
    apply_fn, params, x, eps, domain, lo, hi, chunk_size, strategy,
      max_block_elems: as in ``propagate``.
    y: ``[B]`` int labels in ``[0, Q)`` (checked when concrete).

  Returns:
    ``CertResult(certified[B], correct[B], loss[B])``.
  """
  c = certificate(apply_fn, params, x, y, eps, domain=domain, lo=lo, hi=hi,
                  chunk_size=chunk_size, strategy=strategy,
                  max_block_elems=max_block_elems)
  return CertResult(c.certified, c.correct, c.loss)


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


def explain(apply_fn: ApplyFn, params: Params, x_shape, eps=0.1, *,
            num_points: int = 1, domain: str = 'zonotope', lo=0.0, hi=1.0,
            chunk_size: Optional[int] = None, strategy: str = 'auto',
            max_block_elems: int = _MAX_BLOCK) -> Plan:
  """The plan ``certify`` runs: per bound query, the order and why.

  Nothing is compiled or run: the model is traced abstractly on one point.
  The orders are picked from shapes and the cost table alone, so the plan
  does not depend on ``eps`` or the data (the windowed order's work does:
  its estimate keeps every column).

  Args:
    apply_fn, params, domain, lo, hi, chunk_size, strategy,
      max_block_elems: as in ``certify``.
    x_shape: shape of one point (no points axis).
    eps: unused by the plan; accepted to mirror ``certify``.
    num_points: number of points of the call (sets the chunking).

  Returns:
    A ``Plan``; ``print(plan)`` shows one line per query with the order
    picked, its estimated GEMM FLOPs and memory per point, and one line per
    other order saying why it lost.
  """
  del eps
  _check(np.zeros((1,) + tuple(x_shape), np.float32), None, 0.0, lo, hi,
         domain, chunk_size, strategy)
  opts = Options(domain, strategy, 1, int(max_block_elems), True)
  lo_s, hi_s = np.shape(lo), np.shape(hi)
  treedef, leaves = _avals(params)
  plans, _ = _plan_of_one_point(apply_fn, treedef, leaves, tuple(x_shape),
                                jnp.dtype(jnp.float32), lo_s, hi_s, opts)
  chunk, n_pad = _chunking(int(num_points), chunk_size,
                           planner.rigid_mem(list(plans)), max_block_elems)
  if chunk != 1:
    # The budget per point shrinks with the chunk: the plan at its size.
    plans, _ = _plan_of_one_point(apply_fn, treedef, leaves, tuple(x_shape),
                                  jnp.dtype(jnp.float32), lo_s, hi_s, opts,
                                  chunk)
  return Plan(chunk, n_pad, max(1, int(max_block_elems) // chunk),
              tuple(plans))
