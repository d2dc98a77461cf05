"""Aggregators by name, and the clip -> rule -> noise chain used by experiments."""
import inspect
from typing import Optional

from fl_jax.aggregators import _common
from fl_jax.aggregators.base import Aggregator, chain, weighted_mean
from fl_jax.aggregators.bulyan import bulyan
from fl_jax.aggregators.clipping import clip_norm
from fl_jax.aggregators.geometric_median import geometric_median
from fl_jax.aggregators.krum import krum, multi_krum
from fl_jax.aggregators.median import median
from fl_jax.aggregators.noise import gaussian_noise
from fl_jax.aggregators.trimmed_mean import trimmed_mean
from fl_jax.types import is_traced

RULES = {
    'mean': weighted_mean,
    'median': median,
    'trimmed_mean': trimmed_mean,
    'krum': krum,
    'multi_krum': multi_krum,
    'bulyan': bulyan,
    'geometric_median': geometric_median,
}


def get_aggregator(name: str, **hparams) -> Aggregator:
  """The reducing rule ``name`` built with ``hparams``.

  Names and hyper-parameters: ``mean`` (none), ``median`` (``method``),
  ``trimmed_mean`` (``beta``), ``krum`` (``num_byzantine``), ``multi_krum``
  (``num_byzantine``, ``m``), ``bulyan`` (``num_byzantine``),
  ``geometric_median`` (``nu``, ``tol``, ``max_iters``).

  Raises:
    ValueError: unknown name, unknown or missing hyper-parameter, or a bad
      value (the factories check their ranges; constraints involving the
      number of clients are checked when the rule is traced).
  """
  if name not in RULES:
    raise ValueError(f'unknown aggregator {name!r}; expected one of {sorted(RULES)}')
  factory = RULES[name]
  params = inspect.signature(factory).parameters
  unknown = sorted(set(hparams) - set(params))
  if unknown:
    raise ValueError(f'aggregator {name!r} takes no hyper-parameter(s) {unknown}; '
                     f'it accepts {sorted(params)}')
  missing = sorted(p for p, v in params.items()
                   if v.default is inspect.Parameter.empty and p not in hparams)
  if missing:
    raise ValueError(f'aggregator {name!r} needs hyper-parameter(s) {missing}')
  return factory(**hparams)


def build(name: str, norm_bound: Optional[float] = None, dp_sigma: float = 0.0,
          seed: int = 0, **hparams) -> Aggregator:
  """Clipping, then the rule ``name``, then DP noise, as one chain.

  ``chain(clip_norm(norm_bound), get_aggregator(name, **hparams),
  gaussian_noise(dp_sigma, seed))``.

  The clipping stage is left out when ``norm_bound`` is None and the noise
  stage when ``dp_sigma == 0`` (a traced ``dp_sigma``, one per run of a
  vectorized sweep, always keeps it: zero noise is then added exactly); the result is always a chain, so its state is
  a :class:`fl_jax.aggregators.base.ChainState`.

  Raises:
    ValueError: as :func:`get_aggregator`, or ``norm_bound <= 0``,
      ``dp_sigma < 0``.
  """
  stages = []
  if norm_bound is not None:
    stages.append(clip_norm(_common.check_float('norm_bound', norm_bound, positive=True)))
  stages.append(get_aggregator(name, **hparams))
  dp_sigma = _common.check_float('dp_sigma', dp_sigma, nonnegative=True)
  if is_traced(dp_sigma) or dp_sigma > 0:
    stages.append(gaussian_noise(dp_sigma, seed))
  return chain(*stages)
