r"""Config of ``launch.certify``: DeepZono (or IBP) certification of a trained checkpoint.

Presets: ``''`` (100 test points at eps 0.1) and ``smoke`` (10 points; about
1 s for the smoke model of ``mnist_fedavg.py:smoke`` on a 2-core CPU). The
certified-FAT Table 1 figures come from the defender's certification set, the
first training points::

  python -m launch.certify --workdir=workdirs/mnist_fat --config.split=train \
      --config.num_points=200 --config.eps=0.1,0.15,0.25

Expected on the FAT model of ``launch/configs/mnist_fat.py``: certified
accuracy about 0.89 / 0.52 / 0.00 at eps 0.1 / 0.15 / 0.25
(docs/certified_fat.md, Table 1's reference row). Every key can be overridden with
``--config.KEY=VALUE``; the config is locked, so a misspelt key is an error
naming it.
"""
import ml_collections

DOMAINS = ('zonotope', 'interval')
SPLITS = ('train', 'test')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.split = 'test'          # data split to certify: 'train' or 'test'
  c.num_points = 100        # first N points of the split
  c.eps = '0.1'             # comma-separated L-inf radii
  c.domain = 'zonotope'     # 'zonotope' (DeepZono) or 'interval' (IBP)
  c.chunk_size = 50         # points per vmapped chunk
  if arg == 'smoke':
    c.num_points = 10
  elif arg:
    raise ValueError(f'unknown preset {arg!r}; expected "" or "smoke"')
  c.lock()
  return c
