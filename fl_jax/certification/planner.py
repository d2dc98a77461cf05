"""One planner over the association orders of a bound query.

A bound query asks for the radius ``sum_j |L_j| beta_j`` of one lazy value
(a ReLU / max-pool input or the output, see ``nodes``) over some symbol
blocks. The matrix chain ``L`` can be associated in several orders; all
give the same numbers (float rounding aside) at very different costs. Each
order is one object with the same interface:

* ``candidate(graph, query)`` -> a ``Candidate`` (estimated cost in GEMM
  FLOPs, largest intermediate per point, how to run it) or a string saying
  why the order does not apply.

The orders (``ORDERS``, by name):

* ``forward``   -- push ``diag(beta)`` (``k`` generators) through the ops
  (the textbook DeepZ order); cost ``k * path``, memory ``k * widest``;
* ``backward``  -- pull the value's unit rows back through the transposed
  ops, in row blocks (memory adapts to the budget); cost ``n * path``;
* ``colouring`` -- inputs of a conv chain whose receptive fields never
  overlap share one forward pass (Jacobian colouring), the other blocks by
  the cheaper of forward / backward;
* ``local``     -- rows of a conv chain pulled back on their receptive
  fields (``local_chain``);
* ``windowed``  -- a dense layer over a conv chain, block by block in
  forward order with the kept columns of a chunk pooled (``windowed``).

Before them, blocks that reach the value through a single mixing op (and
otherwise permutations, scalings, selections) take the exact ``abs``
shortcut ``|op|(beta)`` (one pass), in ``'auto'`` and every forced order
but ``'forward'`` / ``'backward'`` (which run their order everywhere, as
references).

``choose`` picks, in ``'auto'``, the cheapest candidate (``Tuning``
weights, see ``tuning``) whose memory fits the per-point budget (orders
that block their work to the budget always fit); a forced order runs
wherever it applies, and where it does not the cheapest is used and the
plan says so. Every decision is recorded in a ``QueryPlan``.
"""
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

from fl_jax.certification import local_chain
from fl_jax.certification import nodes as nd
from fl_jax.certification import windowed


class Candidate(NamedTuple):
  """One order's offer for a query.

  Attributes:
    order: the order's name.
    cost: estimated cost per point, in GEMM FLOPs (``Tuning`` weights).
    mem: largest intermediate per point (array elements).
    elastic: the order blocks its work to the budget (always fits).
    run: ``() -> radius`` in the value's shape.
  """
  order: str
  cost: float
  mem: int
  elastic: bool
  run: Callable


class QueryPlan(NamedTuple):
  """What the planner decided for one bound query.

  Attributes:
    node: name of the value's op; shape: its shape.
    n_blocks: blocks queried; n_abs: of those, taken by the abs shortcut.
    order: the order that ran for the others (``None``: none left).
    cost, mem: its estimate (GEMM FLOPs, elements per point).
    others: ``{order: why it lost}``.
    forced: the order was forced by ``strategy``.
    elastic: the order blocks its work to the budget.
    costs: ``{order: (cost, fits the budget)}`` of every order that applies.
  """
  node: str
  shape: tuple
  n_blocks: int
  n_abs: int
  order: Optional[str]
  cost: float
  mem: int
  others: Dict[str, str]
  forced: bool
  elastic: bool
  costs: Dict[str, tuple]


# --- the orders ----------------------------------------------------------------

class Forward:
  """Materialised generators, pushed through the ops (memoised)."""
  name = 'forward'

  def candidate(self, graph, node, blocks):
    cost = sum(graph.forward_cost(node, s) for s in blocks)
    mem = max(graph.forward_elems(node, s) for s in blocks)
    return Candidate(self.name, cost, mem, False,
                     lambda: graph.forward_radius(node, blocks))


class Backward:
  """Unit rows pulled back through the transposed ops, in row blocks."""
  name = 'backward'

  def candidate(self, graph, node, blocks):
    targets = frozenset(s.index for s in blocks)
    cost = graph.backward_cost(node, targets)
    mem = graph.row_block(node, targets) * graph.widest(node, targets)
    return Candidate(self.name, cost, mem, True,
                     lambda: graph.backward_radius(node, targets))


class Colouring:
  """Coloured forward passes for the colourable blocks, the rest plainly."""
  name = 'colouring'

  def candidate(self, graph, node, blocks):
    coloured, rest, cost, mem = [], [], 0.0, 0
    targets = frozenset(s.index for s in blocks)
    bwd_all = graph.backward_cost(node, targets)
    for s in blocks:
      col = graph.colouring(node, s)
      if col is not None and col[2] < min(graph.forward_cost(node, s),
                                          bwd_all):
        coloured.append((s, col))
        cost += col[2]
        mem = max(mem, col[3])
      else:
        rest.append(s)
    if not coloured:
      return 'no block of a conv chain with disjoint receptive fields pays'
    plain = None
    if rest:
      fwd = Forward().candidate(graph, node, rest)
      bwd = Backward().candidate(graph, node, rest)
      plain = (fwd if fwd.mem <= graph.max_block_elems and fwd.cost <= bwd.cost
               else bwd)
      cost += plain.cost
      mem = max(mem, plain.mem if not plain.elastic else 0)

    def run():
      r = sum(graph.coloured_radius(node, s, col) for s, col in coloured)
      return r if plain is None else r + plain.run()
    return Candidate(self.name, cost, mem, False, run)


class Local:
  """Receptive-field rows of a conv chain (``local_chain``)."""
  name = 'local'

  def candidate(self, graph, node, blocks):
    targets = frozenset(s.index for s in blocks)
    levels = local_chain.chain_of(node, targets)
    if levels is None:
      return 'not the output of a conv chain carrying every block'
    cost = local_chain.cost(levels) * graph.tuning.local_weight
    keep = local_chain.rows_size(levels, targets)
    fits = keep <= graph.max_block_elems      # else: in row blocks
    return Candidate(self.name, cost, keep if fits else 0, not fits,
                     lambda: graph.local_radius(node, levels, targets))


class Windowed:
  """A dense layer over a conv chain, in windowed forward blocks."""
  name = 'windowed'

  def candidate(self, graph, node, blocks):
    p = windowed.plan(node, blocks)
    if p is None:
      return 'not a dense layer over a conv chain carrying every block'
    return Candidate(self.name, p.flops * graph.tuning.windowed_weight,
                     p.elems, False, lambda: graph.windowed_radius(p, blocks))


ORDERS = (Forward(), Backward(), Colouring(), Local(), Windowed())
ORDER_NAMES = tuple(o.name for o in ORDERS)
STRATEGIES = ('auto',) + ORDER_NAMES


def fits(c: Candidate, budget: int) -> bool:
  """Whether a candidate fits ``budget`` (elements per point)."""
  return c.elastic or c.mem <= budget


def choose(graph, node, blocks: Sequence[nd.Source], strategy: str,
           budget: int):
  """``(picked, {order: why it lost}, forced, offers)`` for one query.

  ``'auto'``: the cheapest candidate that fits ``budget`` (elements per
  point) or adapts to it; ties go to the order listed first in ``ORDERS``.
  A forced order is picked wherever it applies, whatever its memory.
  """
  offers, why = [], {}
  for order in ORDERS:
    c = order.candidate(graph, node, blocks)
    if isinstance(c, str):
      why[order.name] = c
    else:
      offers.append(c)
  if strategy != 'auto':
    forced = [c for c in offers if c.order == strategy]
    if forced:
      for c in offers:
        if c is not forced[0]:
          why[c.order] = f'not forced (cost {c.cost:.3g})'
      return forced[0], why, True, offers
  best = None
  for c in offers:
    if not fits(c, budget):
      why[c.order] = (f'needs {c.mem} elements per point, over the budget '
                      f'of {budget}')
    elif best is None or c.cost < best.cost:
      best = c
  for c in offers:
    if c is not best and c.order not in why:
      why[c.order] = f'costs {c.cost:.3g} >= {best.cost:.3g}'
  if strategy != 'auto':
    why[strategy] = why.get(strategy, '') + ' (forced, but does not apply)'
  return best, why, False, offers


def format_plans(plans: List[QueryPlan], header: str = '') -> str:
  """A table of query plans, one line per query and one per losing order."""
  lines = [header] if header else []
  for i, q in enumerate(plans):
    picked = q.order or '-'
    if q.forced:
      picked += ' (forced)'
    lines.append(
        f'  query {i}: {q.node} {q.shape}, {q.n_blocks} blocks '
        f'({q.n_abs} by the abs shortcut) -> {picked}, est. '
        f'{q.cost / 1e9:.4f} GFLOP, {q.mem} elements per point')
    for name in sorted(q.others):
      lines.append(f'      {name:9s} {q.others[name]}')
  total = sum(q.cost for q in plans)
  lines.append(f'  total est. {total / 1e9:.4f} GFLOP per point '
               f'(GEMM-FLOP equivalents, every windowed column kept)')
  return '\n'.join(lines)


def rigid_mem(plans: List[QueryPlan]) -> int:
  """Largest per-point memory among the picked orders that cannot block."""
  return max([0] + [q.mem for q in plans
                    if q.order is not None and not q.elastic])

