r"""Certifies a trained checkpoint of ``launch.train`` (DeepZono or IBP).

  python -m launch.certify --workdir=workdirs/mnist_fedavg
  python -m launch.certify --workdir=workdirs/mnist_fat --config.split=train \
      --config.num_points=1000 --config.eps=0.1,0.15,0.25 --config.domain=zonotope

Settings: ``launch/configs/certify.py`` (``--config.KEY=VALUE`` overrides).

Rebuilds the model of the workdir, loads its parameters, takes the first
``num_points`` points of ``split`` of the workdir's data set and, for
every radius of ``eps``, prints and writes (JSON, default ``WORKDIR/certify_SPLIT.json``)
the certified accuracy, the mean certifiable loss (Zizzo et al. 2021, Eq. 3),
the number of certified points and the seconds taken (the first eps includes
the one-off compilation; later radii reuse it).
"""
import json
import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from launch.configs.certify import DOMAINS, SPLITS

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'certify.py')
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG,
                                          'Certification config file (with :preset).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir of launch.train.',
                               required=True)
_OUT = flags.DEFINE_string('out', None, 'Output JSON (default in workdir).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fl_jax import certification  # pylint: disable=g-import-not-at-top
  from fl_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from fl_jax.simulation import train  # pylint: disable=g-import-not-at-top

  c = _CONFIG.value
  try:
    eps_list = [float(e) for e in str(c.eps).split(',') if e.strip()]
  except ValueError as e:
    raise app.UsageError(f'eps={c.eps!r}: expected comma-separated numbers') from e
  if not eps_list or any(not 0 <= e <= 1 for e in eps_list):
    raise app.UsageError(f'eps={c.eps!r}: every radius must be in [0, 1]')
  if c.num_points < 1 or c.chunk_size < 1:
    raise app.UsageError(f'num_points={c.num_points}, chunk_size={c.chunk_size}: need >= 1')
  if c.split not in SPLITS or c.domain not in DOMAINS:
    raise app.UsageError(f'split={c.split!r}, domain={c.domain!r}: expected a split in '
                         f'{SPLITS} and a domain in {DOMAINS}')
  model, params, cfg = train.restore(_WORKDIR.value)
  ds = data_lib.load_dataset(cfg['dataset'], c.split,
                             data_dir=cfg.get('data_dir') or None)
  n = min(c.num_points, ds.x.shape[0])
  x, y = jnp.asarray(ds.x[:n]), jnp.asarray(ds.y[:n])
  print(f'{cfg["model"]} on the first {n} {cfg["dataset"]} {c.split} '
        f'points, domain {c.domain}, devices {jax.devices()}', flush=True)
  kw = dict(domain=c.domain, chunk_size=min(c.chunk_size, n))
  rows = []
  for k, eps in enumerate(eps_list):
    t0 = time.perf_counter()
    res = jax.block_until_ready(
        certification.certify(model.apply, params, x, y, eps, **kw))
    seconds = time.perf_counter() - t0
    row = {'eps': eps,
           'certified_accuracy': float(jnp.mean(res.certified & res.correct)),
           'mean_certifiable_loss': float(jnp.mean(res.loss)),
           'certified': int(jnp.sum(res.certified)),
           'clean_accuracy': float(jnp.mean(res.correct)),
           'points': n, 'seconds': seconds,
           'includes_compilation': k == 0}
    rows.append(row)
    print(f'eps={eps:g}: certified accuracy {row["certified_accuracy"]:.4f}, '
          f'mean certifiable loss {row["mean_certifiable_loss"]:.4f}, '
          f'{row["certified"]}/{n} certified, {seconds:.2f} s'
          + (' (incl. compilation)' if k == 0 else ''), flush=True)
  out = _OUT.value or os.path.join(_WORKDIR.value,
                                   f'certify_{c.split}.json')
  with open(out, 'w') as f:
    json.dump({'workdir': _WORKDIR.value, 'split': c.split,
               'domain': c.domain, 'chunk_size': kw['chunk_size'],
               'results': rows}, f, indent=2)
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
