r"""Clean and PGD accuracy of a trained workdir on the whole test set.

  python benchmarks/evaluate_checkpoint.py --workdir=workdirs/mnist_fat --eps=0.25 \
      --steps=20 --restarts=1
"""
import json
import time

from absl import app
from absl import flags
import jax

from fl_jax import data as data_lib
from fl_jax import metrics
from fl_jax.simulation import train as train_lib

_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/mnist_fat', 'A launch.train workdir.')
_EPS = flags.DEFINE_list('eps', ['0.25'], 'PGD radii.')
_STEPS = flags.DEFINE_integer('steps', 20, 'PGD steps.')
_RESTARTS = flags.DEFINE_integer('restarts', 1, 'PGD restarts.')
_POINTS = flags.DEFINE_integer('points', 0, 'First N test points (0 = all).')


def main(argv):
  del argv
  model, params, cfg = train_lib.restore(_WORKDIR.value)
  test = data_lib.load_dataset(cfg['dataset'], 'test', data_dir=cfg.get('data_dir') or None)
  n = _POINTS.value or test.x.shape[0]
  t = time.time()
  out = {'clean_accuracy': float(metrics.accuracy(model.apply, params, test.x, test.y))}
  accs = metrics.pgd_accuracy(model.apply, params, test.x[:n], test.y[:n], jax.random.key(0),
                              [float(e) for e in _EPS.value], steps=_STEPS.value,
                              restarts=_RESTARTS.value)
  out.update({f'pgd_accuracy@{e:g}': float(a) for e, a in accs.items()})
  out.update(points=n, steps=_STEPS.value, restarts=_RESTARTS.value, seconds=time.time() - t)
  print(json.dumps(out))


if __name__ == '__main__':
  app.run(main)
