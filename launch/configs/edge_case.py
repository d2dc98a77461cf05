r"""Edge-case backdoors, the edge-case paper's Task 2 on MNIST (Wang et al. 2020).

The attacker wants 7s from another handwriting corpus classified as 1. The
FL process starts from an honest FedAvg model (the paper: at about 88% test
accuracy); an attacker is forced into every 10th round (fixed frequency)
with ``D'`` = 66 edge 7s labelled 1 + 100 clean MNIST images. Honest clients:
a Dirichlet(0.5) partition of MNIST over 600 clients (about 90 images each,
the paper's ~100 per EMNIST client), 30 per round, batch 32, lr 0.1 x
0.998^t, momentum 0.9, weight decay 1e-4. Defences of the paper: NDC (norm
bound 2), Krum / Multi-Krum (``m = n - f``), RFA (smoothing 1e-5, tolerance
0.1, 500 iterations), weak DP (sigma 0.001 / 0.002). Attacks: black-box
(honest training on ``D'``), PGD (radius 1.5 against NDC and 1.0 against
the robust rules, x 0.998^t, projected every 10 steps) and PGD with model
replacement (training radius 0.3 / 0.25).

The edge set is ``uci_digits`` by default: the 7s of the UCI optical digits
that scikit-learn ships (other writers, other scanners, 8x8 resolution),
size-normalised and centred as MNIST was; ``edge_source='ardis'`` with
``edge_dir`` reads ARDIS DATASET_IV, the paper's source; ``'mnist'`` takes
ordinary MNIST 7s (the in-distribution comparison). See
``fl_jax/simulation/edge_task.py``.

Presets (``--config=launch/configs/edge_case.py:PRESET``):

* ``''`` -- the paper's sizes (LeNet of the PyTorch MNIST example, 600
  clients, 30 per round, 5 local epochs, 500 rounds): for an accelerator.
* ``cpu`` -- LeNet-5, 10 clients per round, 2 local epochs, 300 rounds
  (about 1.3 rounds/s on 2 CPU cores).
* ``fast`` -- the ``cpu`` preset with the 784-100-10 MLP instead of LeNet-5
  (79k parameters against 62k; 20-30 rounds/s on 2 CPU cores) and 200
  rounds: the preset of the CPU figures in ``docs/edge_case.md``.
* ``smoke`` -- seconds-long, for tests.

Every preset starts from an honest FedAvg model: ``launch.edge_figures``
first trains one for ``pretrain_rounds`` rounds (cached per model) and sets
``init_checkpoint``. By hand::

  python -m launch.train --config=launch/configs/edge_case.py:fast \
      --config.attack= --config.rounds=20 --workdir=workdirs/edge_pretrain
  python -m launch.train --config=launch/configs/edge_case.py:fast \
      --config.init_checkpoint=workdirs/edge_pretrain --workdir=workdirs/edge_fast

Each figure of the paper is a sweep over this config, e.g.
``python -m launch.edge_figures --figure=defences --preset=fast``.
"""
import ml_collections

from launch.configs import mnist_fedavg


def set_edge_case(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The Task-2 settings on top of a base config (in place)."""
  c.num_cert = 0
  c.num_val = 0
  c.partition = 'dirichlet'
  c.dirichlet_alpha = 0.5
  c.min_client_size = 10
  c.num_clients = 600
  c.clients_per_round = 30
  c.model = 'lenet'
  c.model_width = 1.0       # hidden-width multiplier k (lenet, lenet5, mlp)
  c.local_epochs = 5
  c.batch_size = 32
  c.lr = 0.1
  c.lr_decay = 0.998
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.rounds = 500
  c.pretrain_rounds = 10    # honest FedAvg rounds before the attack (to ~88%)
  c.eval_every = 10
  c.checkpoint_every = 50
  c.aggregator = 'mean'
  c.num_byzantine = 1       # f of Krum / Multi-Krum (m = n - f)
  c.norm_bound = 0.0        # NDC: 2.0
  c.dp_sigma = 0.0          # weak DP: 0.001 / 0.002
  # The attacker.
  c.attack = 'edge_blackbox'    # edge_blackbox | edge_pgd | edge_replacement | '' (none)
  c.attack_schedule = 'fixed_frequency'   # fixed_frequency | fixed_pool
  c.attack_frequency = 10   # fixed_frequency: an attacker in rounds F, 2F, ... (1-based)
  c.num_malicious = 1       # attackers (take turns under fixed_frequency)
  c.malicious_seed = 0
  c.attack_start_round = 0
  c.attack_min_malicious = 1
  c.attack_epochs = 5       # local epochs of the PGD attackers
  c.pgd_delta = 1.5         # vs NDC; 1.0 vs Krum, Multi-Krum, RFA
  c.replacement_delta = 0.3    # vs NDC; 0.25 vs the robust rules
  c.replacement_send_delta = 0.0   # radius of the boosted update (0: unprojected)
  c.delta_decay = 0.998
  c.project_every = 10
  # The edge set and the target task.
  c.edge_source = 'uci_digits'  # uci_digits | ardis | mnist (in-distribution)
  c.edge_dir = ''           # ARDIS DATASET_IV files (edge_source='ardis')
  c.edge_digit = 7
  c.edge_target = 1
  c.edge_num_train = 66     # edge examples in D'
  c.edge_num_clean = 100    # clean examples in D'
  c.edge_num_test = 0       # target-task test images (0: all of the source's)
  c.edge_attacker_share = 1.0   # p: the attacker's share of the edge examples
  c.edge_honest_clients = 0    # honest clients holding the rest (0: all, round-robin)
  return c


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  c = mnist_fedavg.get_config()
  c.unlock()  # the base is locked; this file adds its own keys
  c = set_edge_case(c)
  if arg in ('cpu', 'fast'):
    c.model = 'lenet5' if arg == 'cpu' else 'mlp'
    c.clients_per_round = 10
    c.local_epochs = 2
    c.attack_epochs = 2
    c.rounds = 300 if arg == 'cpu' else 200
    c.pretrain_rounds = 20
    c.eval_every = 5        # right after every attack round and half-way between
  elif arg == 'smoke':
    c.num_clients = 20
    c.clients_per_round = 5
    c.client_pool_size = 1000
    c.model = 'mlp'
    c.local_epochs = 1
    c.attack_epochs = 1
    c.rounds = 4
    c.pretrain_rounds = 2
    c.eval_every = 2
    c.checkpoint_every = 2
    c.attack_frequency = 2
    c.edge_num_train = 20
    c.edge_num_clean = 20
    c.edge_num_test = 40
  elif arg:
    raise ValueError(f"unknown preset {arg!r}; expected '', 'cpu', 'fast' or 'smoke'")
  c.lock()
  return c
