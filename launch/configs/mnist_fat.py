"""MNIST federated adversarial training (certified-FAT paper, Section 5).

500 IID clients, 5 per round, coordinate-wise median aggregation, local PGD
adversarial training at eps 0.25 (the paper's L_inf^adv for MNIST; 7 steps of
0.07, half of every batch replaced by PGD examples), 2 local epochs. PGD
accuracy is evaluated with 20 steps at eps 0.25 on the first 1000 test points.
To fit a 2-core CPU the run starts from the FedAvg model of the main job
(``init_checkpoint``); run that first::

  python -m launch.train --workdir=workdirs/mnist_fedavg
  python -m launch.train --config=launch/configs/mnist_fat.py --workdir=workdirs/mnist_fat

Expected: 97.69% clean and 88.32% PGD accuracy (eps 0.25, 20 steps, all test
points) after 400 rounds, 24.6 min on a 2-core CPU (docs/certified_fat.md).

Preset ``short`` trains fewer rounds with a cheaper attack in the local loop.
"""
from launch.configs import mnist_fedavg


def get_config(arg: str = ''):
  c = mnist_fedavg.get_config()
  c.unlock()  # the base is locked; this file adds its own keys
  c.aggregator = 'median'
  c.adv_train = True
  c.adv_eps = 0.25
  c.adv_steps = 7
  c.adv_step_size = 0.07
  c.adv_fraction = 0.5
  c.local_epochs = 2
  c.lr = 0.05
  c.init_checkpoint = 'workdirs/mnist_fedavg'
  c.rounds = 400
  c.eval_every = 50
  c.checkpoint_every = 50
  c.eval_pgd_eps = (0.25,)
  c.eval_pgd_steps = 20
  c.eval_pgd_points = 1000
  if arg == 'short':
    c.rounds = 150
  elif arg:
    raise ValueError(f'unknown preset {arg!r}; expected "" or "short"')
  c.lock()
  return c
