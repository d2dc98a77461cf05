r"""Certifies a trained checkpoint of ``launch.train`` (DeepZono or IBP).

  python -m launch.certify --workdir=workdirs/mnist_fedavg
  python -m launch.certify --workdir=workdirs/mnist_fat --split=train \
      --num_points=1000 --eps=0.1,0.15,0.25 --domain=zonotope --chunk_size=50

Rebuilds the model of the workdir, loads its parameters, takes the first
``--num_points`` points of ``--split`` of the workdir's data set and, for
every eps, prints and writes (JSON, default ``WORKDIR/certify_SPLIT.json``)
the certified accuracy, the mean certifiable loss (Zizzo et al. 2021, Eq. 3),
the number of certified points and the seconds taken (the first eps includes
the one-off compilation; later radii reuse it).
"""
import json
import os
import time

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir of launch.train.',
                               required=True)
_SPLIT = flags.DEFINE_enum('split', 'test', ['train', 'test'],
                           'Data split to certify.')
_NUM = flags.DEFINE_integer('num_points', 100, 'First N points of the split.')
_EPS = flags.DEFINE_list('eps', ['0.1'], 'Certification radii (L-inf).')
_DOMAIN = flags.DEFINE_enum('domain', 'zonotope', ['zonotope', 'interval'],
                            'Abstract domain.')
_CHUNK = flags.DEFINE_integer('chunk_size', 50, 'Points per vmapped chunk.')
_OUT = flags.DEFINE_string('out', None, 'Output JSON (default in workdir).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fl_jax import certification  # pylint: disable=g-import-not-at-top
  from fl_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from fl_jax.simulation import train  # pylint: disable=g-import-not-at-top

  eps_list = [float(e) for e in _EPS.value]
  if _NUM.value < 1 or any(e < 0 for e in eps_list):
    raise app.UsageError('need --num_points >= 1 and every --eps >= 0')
  model, params, cfg = train.restore(_WORKDIR.value)
  ds = data_lib.load_dataset(cfg['dataset'], _SPLIT.value,
                             data_dir=cfg.get('data_dir') or None)
  n = min(_NUM.value, ds.x.shape[0])
  x, y = jnp.asarray(ds.x[:n]), jnp.asarray(ds.y[:n])
  print(f'{cfg["model"]} on the first {n} {cfg["dataset"]} {_SPLIT.value} '
        f'points, domain {_DOMAIN.value}, devices {jax.devices()}', flush=True)
  kw = dict(domain=_DOMAIN.value, chunk_size=min(_CHUNK.value, n))
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
                                   f'certify_{_SPLIT.value}.json')
  with open(out, 'w') as f:
    json.dump({'workdir': _WORKDIR.value, 'split': _SPLIT.value,
               'domain': _DOMAIN.value, 'chunk_size': kw['chunk_size'],
               'results': rows}, f, indent=2)
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
