"""The certified-FAT paper's Table 1 on CIFAR-10, and the defended simulation.

The CIFAR-10 rows of Table 1: the same experiment as ``table1_mnist.py`` (whose
keys this config starts from) with the paper's CIFAR-10 settings. Starting from
the federated adversarially trained model of ``launch/configs/cifar10_fat.py``
(``init_checkpoint``), the attacker (175 of 500 clients; 3 of the 5 sampled
clients malicious) takes one round with no attack, defensive distillation or
the stripe backdoor, and each aggregate is evaluated on the test set and judged
by the defender.

From the paper (Section 5, Table 1, Appendix B and D): the CIFAR CNN of
Appendix D (``cifar_cnn``); adversarial training and PGD evaluation at
``L_inf^adv = 8/255``; certification set = the first 100 training points,
validation set = the next 5000; certification radii ``L_inf^crt`` = 1/255,
4/255 and 8/255 (DeepZono zonotopes); distillation temperature T = 25;
vertical-stripe backdoor of magnitude 6/255; median aggregation.

Where the paper is silent (our choices): PGD 7 x 2/255 in local training and in
the attacker's backdoor batches (see ``cifar10_fat.py``); the defender checks
all 100 certification points (the paper's set; the MNIST config checks 200 of
1000 to fit a CPU) but 1000 of the 5000 validation points, as on MNIST; the
attacker trains with lr 0.01 (backdoor: 2 epochs, distillation: 5 teacher and
5 student epochs), as on MNIST but with distill_lr 0.01 instead of 0.1 (this
CNN has no normalisation layers); Table 1 reports PGD accuracy with 20 steps on
the first 1000 test points and certifies all 100 certification points. The
defender uses the paper's rule (accuracies >= 90% of the last accepted
round's, certifiable losses within +-10%): the wider band of
``table1_mnist.py`` was fitted to measured MNIST round-to-round noise, which
we could not measure on CIFAR-10 without a GPU. The
column names print the radii as decimals (``certified_accuracy@0.00392157`` is
1/255).

Cost: DeepZono on ``cifar_cnn`` takes about 1.6 s per point and radius on a
2-core CPU (``python benchmarks/certify.py --models=cifar_cnn``; the first conv
alone adds 32768 ReLU symbols). Table 1 certifies the 100 points at 3 radii 8
times (the defender's reference and its 3 checks, the 4 table rows), about an
hour here, and the defended simulation 300 points per round (8 min), so both
are GPU jobs in practice.
Commands::

  python -m launch.train --config=launch/configs/cifar10_fat.py --workdir=workdirs/cifar10_fat
  python -m launch.experiment --config=launch/configs/table1_cifar10.py --workdir=workdirs/table1_cifar10

Presets: ``smoke`` (tiny sizes, for tests; CIFAR-10 32x32x3 inputs, the paper's
radii and attack settings, but an MLP instead of ``cifar_cnn`` so that the
certification takes milliseconds, not minutes).
"""
from launch.configs import cifar10_fat
from launch.configs import table1_mnist


def get_config(arg: str = ''):
  c = table1_mnist.get_config()
  c.unlock()  # the base is locked; this file adds its own keys
  c = cifar10_fat.set_cifar10(c)
  c.init_checkpoint = 'workdirs/cifar10_fat'
  c.distill_lr = 0.01
  c.defender_val_points = 1000
  c.defender_loss_tol = 0.1       # the paper's rule (see the docstring)
  c.defender_acc_atol = 0.0
  # Table 1 evaluation (test set; certification set = the first num_cert train points).
  c.table_cert_points = 100
  c.table_pgd_points = 1000
  c.table_pgd_steps = 20
  if arg == 'smoke':
    table1_mnist.shrink_for_smoke(c, client_pool_size=200, num_cert=4, num_val=40,
                                  cert_points=4, pgd_points=40)
  elif arg:
    raise ValueError(f'unknown preset {arg!r}; expected "" or "smoke"')
  c.lock()
  return c
