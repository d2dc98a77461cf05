"""Every tuning constant of the certifier, per backend, in one table.

The association orders of ``planner`` give the same numbers; which one is
fastest, and how work is blocked, depends on how a backend runs
convolutions, GEMMs and memory-bound passes. Everything that was measured
rather than derived lives here, as one ``Tuning`` record per backend
(``get()`` returns the current backend's). The planner compares
``weight * FLOPs`` of the orders that fit the memory budget.

The CPU values are estimates for a 2-core x86 CPU and the CNNs of Zizzo
et al. (2021): XLA:CPU runs a convolution about 4x slower per FLOP than a
GEMM (``conv_weight``), the local pull's small transposed convolutions are
weighted alike (``local_weight``) and windowed GEMMs run at GEMM speed.
``max_chunk``: on the MNIST CNN, 100 points, chunks of 16 to 50 ran within
about 6 % of each other in process CPU time and 100 about 5-20 % slower
(``benchmarks/certify.py --layouts``).
"""
from typing import NamedTuple

import jax


class Tuning(NamedTuple):
  """Tuning constants of one backend.

  Attributes:
    conv_weight: cost of one conv FLOP in GEMM FLOPs (planner estimate of
      every conv node).
    local_weight: cost of one local-pull FLOP in GEMM FLOPs.
    windowed_weight: cost of one windowed-GEMM FLOP in GEMM FLOPs.
    row_block_elems: target elements (per chunk) of one backward row block:
      small enough for the memory-bound passes to stay in the last-level
      cache.
    max_block_elems: default memory budget (array elements per chunk) of
      any one intermediate; ``2^26`` is 256 MiB of float32.
    max_chunk: largest number of points the default chunking vmaps at once.
    dense_fan_in_ratio: a conv whose input has at most this many times as
      many elements as one output reads runs as one dense matrix.
    dense_max_elems: largest dense matrix formed for such a conv.
    col2im_max_channels: transposes whose space-to-depth conv would have at
      most this many output channels use the GEMM + shifted-adds form.
    local_dense_ratio: a local pull's window transpose runs as one GEMM up
      to this FLOP ratio.
    min_width, width_growth, global_widths: widths the windowed order pads
      a block's kept columns to (see ``windowed._widths``).
    per_block_widths: pick the windowed width block by block (a switch per
      step); off the CPU every switch waits on the host.
  """
  conv_weight: float = 4.0
  local_weight: float = 4.0
  windowed_weight: float = 1.0
  row_block_elems: int = 1 << 22
  max_block_elems: int = 1 << 26
  max_chunk: int = 32
  dense_fan_in_ratio: int = 4
  dense_max_elems: int = 1 << 22
  col2im_max_channels: int = 8
  local_dense_ratio: int = 8
  min_width: int = 8
  width_growth: float = 2 ** 0.5
  global_widths: int = 6
  per_block_widths: bool = True


TABLE = {
    'cpu': Tuning(),
    'gpu': Tuning(max_chunk=100, per_block_widths=False),
    'tpu': Tuning(max_chunk=100, per_block_widths=False),
}


def get(backend: str = None) -> Tuning:
  """The tuning record of ``backend`` (default: JAX's default backend)."""
  backend = backend or jax.default_backend()
  return TABLE.get(backend, TABLE['gpu'] if backend != 'cpu' else TABLE['cpu'])
