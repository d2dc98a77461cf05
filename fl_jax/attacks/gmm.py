"""A class-conditional Gaussian mixture on features, fitted in closed form.

The edge-case paper measures how "edge" a sample is by the density of its
penultimate-layer features under a Gaussian mixture with one component per
class. With the class labels known, the maximum-likelihood mixture needs no
EM: component ``k`` is the Gaussian of the class-``k`` features,

.. math::
    \\pi_k = n_k / N, \\quad \\mu_k = \\frac{1}{n_k}\\sum_{y_i = k} f_i,
    \\quad \\Sigma_k = \\frac{1}{n_k}\\sum_{y_i = k} (f_i - \\mu_k)(f_i - \\mu_k)^T
    + \\lambda I,

and the log density of a feature vector is
``log p(f) = logsumexp_k [log pi_k + log N(f; mu_k, Sigma_k)]``. The diagonal
variant keeps only ``diag(Sigma_k)``. ``lambda`` (``reg``) keeps covariances
invertible (features after a ReLU are often exactly zero in some
coordinates). Host-side NumPy in float64: it runs once, before training.

References:
  Wang et al., "Attack of the Tails", NeurIPS 2020, Section 2
  ("Constructing a p-edge-case example set") and Figure 2.
"""
import numbers
from typing import NamedTuple

import numpy as np

COVARIANCE_TYPES = ('diag', 'full')


class GaussianMixture(NamedTuple):
  """A fitted mixture (NumPy float64).

  Attributes:
    log_weights: ``[K]`` ``log pi_k`` (``-inf`` for classes without samples).
    means: ``[K, D]``.
    covariances: ``[K, D]`` variances (``'diag'``) or ``[K, D, D]``
      (``'full'``); components without samples hold the identity.
    covariance_type: ``'diag'`` or ``'full'``.
  """
  log_weights: np.ndarray
  means: np.ndarray
  covariances: np.ndarray
  covariance_type: str


def fit_class_gaussians(features, labels, num_classes: int, *,
                        covariance_type: str = 'diag',
                        reg: float = 1e-3) -> GaussianMixture:
  """Fits one Gaussian per class (closed form, see the module docstring).

  Args:
    features: ``[N, D]`` feature vectors.
    labels: ``[N]`` integer classes in ``[0, num_classes)``.
    num_classes: ``K >= 1``.
    covariance_type: ``'diag'`` or ``'full'``.
    reg: ``lambda > 0`` added to the diagonal of every covariance.

  Returns:
    A :class:`GaussianMixture`.

  Raises:
    ValueError: for bad shapes, labels out of range, non-finite features, an
      unknown covariance type or ``reg <= 0``.
  """
  f = np.asarray(features, np.float64)
  y = np.asarray(labels)
  if f.ndim != 2 or f.shape[0] < 1:
    raise ValueError(f'features must be [N, D] with N >= 1, got {f.shape}')
  if y.shape != (f.shape[0],) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'labels must be integers of shape [{f.shape[0]}], got '
                     f'{y.dtype} {y.shape}')
  if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
    raise ValueError(f'num_classes must be an int >= 1, got {num_classes!r}')
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(f'labels span [{y.min()}, {y.max()}], outside '
                     f'[0, {num_classes})')
  if covariance_type not in COVARIANCE_TYPES:
    raise ValueError(f'unknown covariance_type {covariance_type!r}; expected '
                     f'one of {COVARIANCE_TYPES}')
  if not (np.isfinite(reg) and reg > 0):
    raise ValueError(f'reg must be > 0, got {reg!r}')
  if not np.all(np.isfinite(f)):
    raise ValueError('features hold NaN or Inf')
  n, d = f.shape
  counts = np.bincount(y, minlength=num_classes).astype(np.float64)
  with np.errstate(divide='ignore'):
    log_weights = np.log(counts / n)
  onehot = np.eye(num_classes)[y]                              # [N, K]
  safe = np.maximum(counts, 1.0)
  means = onehot.T @ f / safe[:, None]                         # [K, D]
  centered = f - means[y]                                      # [N, D]
  if covariance_type == 'diag':
    cov = onehot.T @ (centered ** 2) / safe[:, None] + reg
    cov[counts == 0] = 1.0
  else:
    cov = np.stack([centered[y == j].T @ centered[y == j]
                    for j in range(num_classes)]) / safe[:, None, None]
    cov += reg * np.eye(d)[None]
    cov[counts == 0] = np.eye(d)
  return GaussianMixture(log_weights, means, cov, covariance_type)


def component_log_densities(gmm: GaussianMixture, features) -> np.ndarray:
  """``log pi_k + log N(f_i; mu_k, Sigma_k)`` for every sample and class: ``[N, K]``."""
  f = np.asarray(features, np.float64)
  k, d = gmm.means.shape
  if f.ndim != 2 or f.shape[1] != d:
    raise ValueError(f'features must be [N, {d}], got {f.shape}')
  if gmm.covariance_type == 'diag':
    # ||(f - mu) / sigma||^2 expanded into matrix products (no [N, K, D]).
    prec = 1.0 / gmm.covariances                               # [K, D]
    maha = ((f ** 2) @ prec.T - 2.0 * f @ (gmm.means * prec).T
            + np.sum(gmm.means ** 2 * prec, axis=1)[None])
    logdet = np.sum(np.log(gmm.covariances), axis=-1)
  else:
    chol = np.linalg.cholesky(gmm.covariances)                 # [K, D, D]
    # Whitened residuals L_k^{-1} (f - mu_k), one triangular system per class.
    maha = np.stack([
        np.sum(np.linalg.solve(chol[j], (f - gmm.means[j]).T) ** 2, axis=0)
        for j in range(k)], axis=1)
    logdet = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=-1)
  return gmm.log_weights[None] - 0.5 * (d * np.log(2 * np.pi) + logdet[None] + maha)


def log_density(gmm: GaussianMixture, features) -> np.ndarray:
  """``log p(f_i) = logsumexp_k [log pi_k + log N(f_i; mu_k, Sigma_k)]``: ``[N]``."""
  comp = component_log_densities(gmm, features)
  top = np.max(comp, axis=1, keepdims=True)
  return top[:, 0] + np.log(np.sum(np.exp(comp - top), axis=1))
