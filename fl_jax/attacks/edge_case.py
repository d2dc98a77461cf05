"""Edge-case example sets: low-density samples, user-supplied sets, mixing.

A *p-edge-case set* holds inputs of density ``P_X(x) <= p`` under the data
distribution, relabelled to the attacker's target. Following the edge-case
paper, the density is measured on the penultimate-layer features of a trained
model with a Gaussian mixture of one component per class
(:mod:`fl_jax.attacks.gmm`), and the lowest-density samples of a *source*
class are kept (on MNIST, e.g., the most unusual 7s, labelled 1). Real edge
sets of the paper (ARDIS 7s, Southwest planes) can be supplied as arrays in
an ``.npz`` file. The black-box attacker then trains on ``D'``, a mix of
edge and clean samples with a chosen ratio (the paper uses 66 ARDIS and 100
EMNIST images, and finds more than half edge samples works well).

Everything here is host-side preparation, run once before training (the
features are computed with one jitted, chunked ``lax.map``).

References:
  Wang et al., "Attack of the Tails", NeurIPS 2020, Sections 2 and 4,
  Appendix A ("Details on the constructions of the edge datasets").
"""
import functools
import os
from typing import Callable, NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fl_jax.adversarial.pgd import check_int
from fl_jax.attacks import gmm as gmm_lib
from fl_jax.types import Array, Params


class EdgeCaseSet(NamedTuple):
  """Edge-case examples (NumPy).

  Attributes:
    x: float32 ``[n, H, W, C]`` inputs in ``[0, 1]``.
    y: int32 ``[n]`` attacker target labels.
    index: int64 ``[n]`` positions in the candidate array (``-1`` if
      unknown, e.g. for loaded sets).
    log_density: float64 ``[n]`` GMM log density of the features (NaN if
      unknown), ascending for :func:`edge_case_set`.
  """
  x: np.ndarray
  y: np.ndarray
  index: np.ndarray
  log_density: np.ndarray


@functools.lru_cache(maxsize=16)
def _features_impl(features_fn, chunk):

  @jax.jit
  def run(params, x):
    n = x.shape[0]
    m = -(-n // chunk)
    xp = jnp.pad(x, [(0, m * chunk - n)] + [(0, 0)] * (x.ndim - 1))
    out = lax.map(lambda xc: features_fn(params, xc),
                  xp.reshape((m, chunk) + x.shape[1:]))
    return out.reshape((m * chunk,) + out.shape[2:])[:n]

  return run


def compute_features(features_fn: Callable[[Params, Array], Array],
                     params: Params, x, chunk_size: int = 1000) -> np.ndarray:
  """Penultimate-layer features of ``x`` in one jitted, chunked call.

  Args:
    features_fn: ``features(params, x[B, ...]) -> [B, F]`` (e.g.
      ``fl_jax.models.get_model(...).features``; pass the same object each
      time to reuse the compilation).
    params: model parameters.
    x: ``[N, ...]`` inputs.
    chunk_size: examples per forward pass.

  Returns:
    NumPy float32 ``[N, F]``.
  """
  check_int('chunk_size', chunk_size, 1)
  x = jnp.asarray(x, jnp.float32)
  if x.ndim < 2 or x.shape[0] < 1:
    raise ValueError(f'x must be a non-empty batch [N, ...], got {x.shape}')
  chunk = min(chunk_size, x.shape[0])
  return np.asarray(_features_impl(features_fn, chunk)(params, x))


def edge_case_set(features_fn: Callable[[Params, Array], Array], params: Params,
                  x, y, source_class: int, num: int, *, target_label: int,
                  num_classes: int, fit_x=None, fit_y=None,
                  covariance_type: str = 'diag', reg: float = 1e-3,
                  chunk_size: int = 1000) -> EdgeCaseSet:
  """The ``num`` lowest-density samples of ``source_class``, relabelled.

  Fits the class-conditional Gaussian mixture to the features of
  ``(fit_x, fit_y)`` (default ``(x, y)``), scores every candidate of
  ``source_class`` in ``(x, y)`` by ``log p(features(x))`` and keeps the
  ``num`` smallest (ascending density), labelled ``target_label``.

  Args:
    features_fn: ``features(params, x) -> [B, F]``.
    params: the trained model whose features are used.
    x: ``[N, H, W, C]`` candidate inputs.
    y: ``[N]`` true labels of the candidates.
    source_class: class whose unusual samples become the edge set (MNIST: 7).
    num: how many to keep, ``1 <= num <= #{y == source_class}``.
    target_label: the attacker's label for them (MNIST: 1).
    num_classes: number of classes (mixture components).
    fit_x: inputs the mixture is fitted on (default ``x``).
    fit_y: their labels (default ``y``).
    covariance_type: ``'diag'`` or ``'full'``.
    reg: covariance regulariser (see :func:`fl_jax.attacks.gmm.fit_class_gaussians`).
    chunk_size: examples per forward pass.

  Returns:
    :class:`EdgeCaseSet` sorted by increasing density. To score another
    candidate pool (e.g. the test set) with the same mixture, use
    :func:`fit_class_gaussians_on` and :func:`select_edge_cases`.
  """
  y = np.asarray(y)
  if fit_x is None:
    fit_x, fit_y = x, y
  elif fit_y is None:
    raise ValueError('fit_x was given without fit_y')
  gmm = fit_class_gaussians_on(features_fn, params, fit_x, fit_y, num_classes,
                               covariance_type=covariance_type, reg=reg,
                               chunk_size=chunk_size)
  return select_edge_cases(gmm, features_fn, params, x, y, source_class, num,
                           target_label=target_label, chunk_size=chunk_size)


def fit_class_gaussians_on(features_fn, params, x, y, num_classes: int, *,
                           covariance_type: str = 'diag', reg: float = 1e-3,
                           chunk_size: int = 1000) -> gmm_lib.GaussianMixture:
  """:func:`fl_jax.attacks.gmm.fit_class_gaussians` on ``features(x)``."""
  feats = compute_features(features_fn, params, x, chunk_size)
  return gmm_lib.fit_class_gaussians(feats, np.asarray(y), num_classes,
                                     covariance_type=covariance_type, reg=reg)


def select_edge_cases(gmm: gmm_lib.GaussianMixture, features_fn, params, x, y,
                      source_class: int, num: int, *, target_label: int,
                      chunk_size: int = 1000) -> EdgeCaseSet:
  """Keeps the ``num`` lowest-density ``source_class`` samples under ``gmm``.

  Args: as :func:`edge_case_set`, with a fitted mixture.

  Returns:
    :class:`EdgeCaseSet` in ascending density.
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  if y.shape != (x.shape[0],):
    raise ValueError(f'y must have shape [{x.shape[0]}], got {y.shape}')
  check_int('num', num, 1)
  candidates = np.flatnonzero(y == source_class)
  if num > candidates.size:
    raise ValueError(f'num ({num}) exceeds the {candidates.size} samples of '
                     f'source_class {source_class}')
  feats = compute_features(features_fn, params, x[candidates], chunk_size)
  logp = gmm_lib.log_density(gmm, feats)
  order = np.argsort(logp, kind='stable')[:num]
  idx = candidates[order]
  return EdgeCaseSet(x[idx], np.full(num, target_label, np.int32),
                     idx.astype(np.int64), logp[order])


def load_edge_set(path: str, *, target_label: Optional[int] = None,
                  expected_shape=None) -> EdgeCaseSet:
  """Loads a user-supplied edge set (e.g. ARDIS 7s, Southwest planes).

  The ``.npz`` file holds ``x`` (``[n, H, W]`` or ``[n, H, W, C]``; uint8 in
  ``[0, 255]`` or floats in ``[0, 1]``) and ``y`` (``[n]`` integer labels).
  2-D images get a channel axis; uint8 images are divided by 255.

  Args:
    path: the ``.npz`` file.
    target_label: if given, every label is replaced by it (the attacker's
      target, e.g. 1 for ARDIS 7s).
    expected_shape: optional ``(H, W, C)`` the images must have.

  Returns:
    :class:`EdgeCaseSet` (``index = -1``, ``log_density = NaN``).

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: missing arrays, bad shapes or values outside the pixel range.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'no edge-case file at {path}')
  with np.load(path) as z:
    missing = [k for k in ('x', 'y') if k not in z.files]
    if missing:
      raise ValueError(f'{path} lacks arrays {missing} (has {z.files})')
    x, y = z['x'], z['y']
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[0] < 1:
    raise ValueError(f'{path}: x must be [n, H, W] or [n, H, W, C], got {x.shape}')
  if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'{path}: y must be integers of shape [{x.shape[0]}], got '
                     f'{y.dtype} {y.shape}')
  if x.dtype == np.uint8:
    x = x.astype(np.float32) / 255.0
  else:
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
      raise ValueError(f'{path}: float images must lie in [0, 1], got '
                       f'[{np.nanmin(x)}, {np.nanmax(x)}]')
  if expected_shape is not None and tuple(x.shape[1:]) != tuple(expected_shape):
    raise ValueError(f'{path}: images are {x.shape[1:]}, expected '
                     f'{tuple(expected_shape)}')
  if target_label is not None:
    y = np.full(x.shape[0], target_label)
  n = x.shape[0]
  return EdgeCaseSet(x, y.astype(np.int32), np.full(n, -1, np.int64),
                     np.full(n, np.nan))


def untargeted_labels(y_true, num_classes: int, seed: int) -> np.ndarray:
  """Random wrong labels, for the untargeted variant of the edge-case attacks.

  The edge-case paper (Remark 2 and the appendix) turns its targeted attacks
  into untargeted ones by asking only that ``x_i`` is classified as anything
  but its true label ``y_i``, which it obtains by fixing some label
  ``y'_i != y_i``. Here ``y'_i = (y_i + s_i) mod C`` with ``s_i`` uniform in
  ``{1, ..., C - 1}``.

  Args:
    y_true: ``[n]`` true labels in ``[0, C)``.
    num_classes: ``C >= 2``.
    seed: NumPy seed.

  Returns:
    int32 ``[n]`` labels, each different from the true one.
  """
  check_int('num_classes', num_classes, 2)
  y = np.asarray(y_true)
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (
      y.size and (y.min() < 0 or y.max() >= num_classes)):
    raise ValueError(f'y_true must be [n] integers in [0, {num_classes})')
  shift = np.random.default_rng(seed).integers(1, num_classes, size=y.shape)
  return ((y + shift) % num_classes).astype(np.int32)


def mix_edge_and_clean(edge_x, edge_y, clean_x, clean_y, *, num_edge: int,
                       num_clean: int, seed: int):
  """The black-box attacker's data set ``D'``: edge and clean samples mixed.

  Draws ``num_edge`` edge samples and ``num_clean`` clean samples without
  replacement (edge-case paper, Task 2: 66 ARDIS + 100 EMNIST images) and
  shuffles them together. The ratio ``num_edge / (num_edge + num_clean)``
  controls how "edgy" the attack is (Figure 3 of the paper).

  Args:
    edge_x: ``[E, ...]`` edge inputs; ``edge_y``: ``[E]`` target labels.
    clean_x: ``[N, ...]`` clean inputs; ``clean_y``: ``[N]`` true labels.
    num_edge: ``0 <= num_edge <= E``.
    num_clean: ``0 <= num_clean <= N``; ``num_edge + num_clean >= 1``.
    seed: NumPy seed.

  Returns:
    ``(x[n, ...], y[n], is_edge[n])`` NumPy arrays, ``n = num_edge + num_clean``.
  """
  check_int('num_edge', num_edge, 0)
  check_int('num_clean', num_clean, 0)
  if num_edge + num_clean < 1:
    raise ValueError('need num_edge + num_clean >= 1')
  edge_x, clean_x = np.asarray(edge_x), np.asarray(clean_x)
  if num_edge > edge_x.shape[0]:
    raise ValueError(f'num_edge ({num_edge}) exceeds the {edge_x.shape[0]} edge samples')
  if num_clean > clean_x.shape[0]:
    raise ValueError(f'num_clean ({num_clean}) exceeds the {clean_x.shape[0]} clean samples')
  if edge_x.shape[1:] != clean_x.shape[1:]:
    raise ValueError(f'edge inputs {edge_x.shape[1:]} and clean inputs '
                     f'{clean_x.shape[1:]} differ in shape')
  rng = np.random.default_rng(seed)
  ei = rng.choice(edge_x.shape[0], num_edge, replace=False)
  ci = rng.choice(clean_x.shape[0], num_clean, replace=False)
  x = np.concatenate([edge_x[ei], clean_x[ci]]).astype(np.float32)
  y = np.concatenate([np.asarray(edge_y)[ei], np.asarray(clean_y)[ci]]).astype(np.int32)
  is_edge = np.concatenate([np.ones(num_edge, bool), np.zeros(num_clean, bool)])
  perm = rng.permutation(x.shape[0])
  return x[perm], y[perm], is_edge[perm]
