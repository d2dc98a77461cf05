"""Reference DeepZ bounds from ART's ``PytorchDeepZ`` (run under /work/artvenv).

This script is *not* part of fl_jax and must not import it: it runs in a
separate virtual environment that has torch and the adversarial-robustness-
toolbox (ART) installed, so that ART never becomes a dependency of fl_jax.
``benchmarks/compare_art.py`` writes the input ``.npz`` and calls this script.

Input ``.npz`` (written by compare_art.py):
  spec: JSON string, a list of layers, each one of
    ``{"op": "conv", "w": name, "b": name, "stride": [s, s], "padding": [p, p]}``
    (kernel stored HWIO as in fl_jax), ``{"op": "relu"}``, ``{"op": "flatten"}``
    (NHWC flatten order, as fl_jax), ``{"op": "dense", "w": name, "b": name}``
    (kernel stored ``[in, out]``);
  the arrays named in ``spec``; ``x[N, H, W, C]`` in [0, 1]; ``y[N]``;
  ``eps[E]``.

Output ``.npz``: for every eps index ``e``: ``lower_e[N, Q]``, ``upper_e[N, Q]``
(per-class logit bounds), ``diff_upper_e[N, Q]`` (upper bound of
``z_q - z_pred`` on ART's output zonotope, 0 at ``q == pred``),
``certified_e[N]`` (ART's ``certify`` with the model's prediction),
``seconds_e`` / ``cpu_seconds_e`` (wall / process CPU time of ART's zonotope
propagation plus certify for the ``N`` points); and ``pred[N]`` (ART's
concrete prediction).

Usage: /work/artvenv/bin/python benchmarks/art_reference.py IN.npz OUT.npz
"""
import json
import sys
import time

import numpy as np
import torch
from art.estimators.certification.deep_z import PytorchDeepZ


class _Net(torch.nn.Module):
  """A sequential conv / dense ReLU net; flatten happens inside forward.

  ART's converter walks ``model.children()`` and only accepts Conv2d, Linear
  and ReLU children; it infers the conv -> dense reshape itself, flattening
  channels-first (C, H, W). The first dense kernel is permuted so that this
  matches fl_jax's NHWC (H, W, C) flatten order.
  """

  def __init__(self, spec, arrays, input_shape_hwc):
    super().__init__()
    h, w, c = input_shape_hwc
    self.steps = []
    flat_perm = None
    for i, layer in enumerate(spec):
      op = layer['op']
      if op == 'conv':
        kern = arrays[layer['w']]                     # [kh, kw, cin, cout]
        kh, kw, cin, cout = kern.shape
        stride, pad = tuple(layer['stride']), tuple(layer['padding'])
        mod = torch.nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=pad)
        mod.weight.data = torch.from_numpy(
            np.ascontiguousarray(kern.transpose(3, 2, 0, 1))).float()
        mod.bias.data = torch.from_numpy(arrays[layer['b']]).float()
        h = (h + 2 * pad[0] - kh) // stride[0] + 1
        w = (w + 2 * pad[1] - kw) // stride[1] + 1
        c = cout
      elif op == 'relu':
        mod = torch.nn.ReLU()
      elif op == 'flatten':
        # torch index (ch, i, j) -> fl_jax index (i, j, ch).
        idx = np.arange(h * w * c).reshape(h, w, c)
        flat_perm = idx.transpose(2, 0, 1).reshape(-1)
        self.steps.append(('flatten', None))
        continue
      elif op == 'dense':
        kern = arrays[layer['w']]                     # [in, out]
        if flat_perm is not None:
          kern = kern[flat_perm]
          flat_perm = None
        mod = torch.nn.Linear(kern.shape[0], kern.shape[1])
        mod.weight.data = torch.from_numpy(np.ascontiguousarray(kern.T)).float()
        mod.bias.data = torch.from_numpy(arrays[layer['b']]).float()
      else:
        raise ValueError(f'unsupported layer op {op!r}')
      name = f'layer{i}'
      self.add_module(name, mod)
      self.steps.append(('module', name))

  def forward(self, x):
    for kind, name in self.steps:
      if kind == 'flatten':
        x = x.reshape(x.shape[0], -1)
      else:
        x = getattr(self, name)(x)
    return x


def main(argv):
  if len(argv) != 3:
    raise SystemExit(__doc__)
  data = np.load(argv[1])
  spec = json.loads(str(data['spec']))
  x, y, eps_list = data['x'], data['y'], data['eps']
  n, hh, ww, cc = x.shape
  torch.set_num_threads(2)
  net = _Net(spec, data, (hh, ww, cc))
  num_classes = int(data[spec[-1]['b']].shape[0])
  certifier = PytorchDeepZ(model=net, clip_values=(0.0, 1.0),
                           loss=torch.nn.CrossEntropyLoss(),
                           input_shape=(cc, hh, ww), nb_classes=num_classes,
                           device_type='cpu')
  x_chw = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)
  certifier.model.set_forward_mode('concrete')
  pred = np.argmax(certifier.predict(x_chw), axis=1)
  certifier.model.set_forward_mode('abstract')
  out = {'pred': pred}
  for e, eps in enumerate(eps_list):
    lower = np.zeros((n, num_classes), np.float32)
    upper = np.zeros((n, num_classes), np.float32)
    diff_upper = np.zeros((n, num_classes), np.float32)
    certified = np.zeros((n,), bool)
    start = time.perf_counter()
    cpu_start = time.process_time()
    for i in range(n):
      with torch.no_grad():
        bias, gens = certifier.predict_zonotopes(
            cent=x_chw[i:i + 1], bound=float(eps))
        # ART's certify re-runs the forward pass on the pre-processed box;
        # we reuse the output zonotope of predict_zonotopes (same numbers,
        # and it keeps ART's timing to one propagation per point).
        cent = bias[0][0]
        g = gens[0]
      ub, lb = certifier.zonotope_get_bounds(torch.from_numpy(cent),
                                            torch.from_numpy(g))
      upper[i] = [float(v) for v in ub]
      lower[i] = [float(v) for v in lb]
      p = int(pred[i])
      certified[i] = all(
          certifier.certify_via_subtraction(p, q, cent, g)
          for q in range(num_classes) if q != p)
      d_cent = cent - cent[p]
      d_gen = g - g[:, p:p + 1]
      diff_upper[i] = np.sum(np.abs(d_gen), axis=0) + d_cent
    seconds = time.perf_counter() - start
    out[f'cpu_seconds_{e}'] = np.float64(time.process_time() - cpu_start)
    out[f'lower_{e}'] = lower
    out[f'upper_{e}'] = upper
    out[f'diff_upper_{e}'] = diff_upper
    out[f'certified_{e}'] = certified
    out[f'seconds_{e}'] = np.float64(seconds)
    print(f'ART PytorchDeepZ eps={eps:g}: {certified.sum()}/{n} certified '
          f'(w.r.t. prediction), {seconds / n * 1e3:.1f} ms/point', flush=True)
  np.savez(argv[2], **out)


if __name__ == '__main__':
  main(sys.argv)
