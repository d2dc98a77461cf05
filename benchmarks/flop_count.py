"""FLOPs of a jitted function from its jaxpr: contractions, loops expanded.

XLA's ``cost_analysis`` counts a loop body once (``lax.map`` over chunks,
``scan`` over row blocks or windowed blocks), so it under-counts the
certifier by the trip counts; on GPU it also leaves out the GEMMs handed to
cuBLAS. This walks the jaxpr instead and counts ``2 * MACs`` of every
``dot_general`` and ``conv_general_dilated`` that reaches an output,
multiplying scan bodies by their length. A ``cond`` / ``switch`` runs one
branch chosen at run time (the windowed order's width), so the count is a
range: ``(cheapest branch, dearest branch)``. Elementwise work is not
counted.
"""
import contextlib
from typing import Tuple

import jax
import numpy as np
from jax.extend import core as jex_core


def _eqn_flops(eqn) -> Tuple[float, float]:
  name = eqn.primitive.name
  if name == 'dot_general':
    (lc, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    k = float(np.prod([lhs[d] for d in lc])) if lc else 1.0
    f = 2.0 * float(np.prod(eqn.outvars[0].aval.shape)) * k
    return f, f
  if name == 'conv_general_dilated':
    rhs = eqn.invars[1].aval.shape
    dn = eqn.params['dimension_numbers']
    out_ch = rhs[dn.rhs_spec[0]]
    fan_in = float(np.prod(rhs)) / out_ch
    f = 2.0 * float(np.prod(eqn.outvars[0].aval.shape)) * fan_in
    return f, f
  if name == 'cond':
    counts = [jaxpr_flops(b.jaxpr) for b in eqn.params['branches']]
    return min(c[0] for c in counts), max(c[1] for c in counts)
  if name == 'scan':
    lo, hi = jaxpr_flops(eqn.params['jaxpr'].jaxpr)
    n = float(eqn.params['length'])
    return n * lo, n * hi
  lo = hi = 0.0
  for sub in jex_core.jaxprs_in_params(eqn.params):
    a, b = jaxpr_flops(sub)
    lo, hi = lo + a, hi + b
  return lo, hi


def jaxpr_flops(jaxpr) -> Tuple[float, float]:
  """``(low, high)`` FLOPs of the equations of ``jaxpr`` that reach its outputs."""
  live = {v for v in jaxpr.outvars if isinstance(v, jex_core.Var)}
  lo = hi = 0.0
  for eqn in reversed(jaxpr.eqns):
    if not (live & set(eqn.outvars)) and not eqn.effects:
      continue
    live.update(v for v in eqn.invars if isinstance(v, jex_core.Var))
    a, b = _eqn_flops(eqn)
    lo, hi = lo + a, hi + b
  return lo, hi


def flops(fn, *args) -> Tuple[float, float]:
  """``(low, high)`` FLOPs of one call ``fn(*args)``."""
  closed = jax.make_jaxpr(fn)(*args)
  return jaxpr_flops(closed.jaxpr)


def executed(fn, *args) -> float:
  """FLOPs that one call ``fn(*args)`` ran, windowed widths included.

  The windowed order picks each block's GEMM width at run time, so the
  jaxpr only bounds its work. This counts everything outside those width
  switches from the jaxpr (the low end of :func:`flops`: the empty width
  costs nothing) and adds what the switches report when run once under
  ``count_gemm_flops``. Clears JAX's caches before and after, so
  the reporting version is traced apart and never reused.
  """
  jax.clear_caches()
  sink = []
  try:
    with count_gemm_flops(sink):
      jax.block_until_ready(jax.jit(fn)(*args))
      jax.effects_barrier()
  finally:
    jax.clear_caches()
  lo, _ = flops(fn, *args)
  return lo + sum(sink)


def gemm_flops(g) -> float:
  """FLOPs (``2 * MACs``) of the block GEMMs one windowed radius ran.

  ``g`` is a ``fl_jax.certification.windowed.BlockGemms`` report: block ``b``
  ran ``[n_out, K] x [K, w_b]`` plus, below the full width, the ``[w_b, P]``
  product that gives each column back to its point.
  """
  ran = np.asarray(g.widths)[np.asarray(g.picked)]
  return float(sum(2.0 * g.n_out * w * (g.k_dim + (g.n_pts if w < g.full else 0))
                   for w in ran.tolist()))


@contextlib.contextmanager
def count_gemm_flops(sink: list):
  """Appends to ``sink`` the FLOPs of the windowed block GEMMs that run inside it."""
  from fl_jax.certification import windowed  # pylint: disable=g-import-not-at-top
  with windowed.report_block_widths(lambda g: sink.append(gemm_flops(g))):
    yield sink
