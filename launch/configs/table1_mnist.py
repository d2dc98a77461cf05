"""The certified-FAT paper's Table 1 on MNIST, and the defended simulation.

Starts from the federated adversarially trained model of
``launch/configs/mnist_fat.py`` (``init_checkpoint``), lets the attacker (175 of
500 clients; 3 of the 5 sampled clients malicious) take one round with no attack,
defensive distillation (T = 100) or the stripe backdoor (alternating
+-0.1 stripes), and
evaluates each aggregate as in Table 1 (certification radii 0.1, 0.15, 0.25),
together with the defender's decision. Command::

  python -m launch.experiment --config=launch/configs/table1_mnist.py --workdir=workdirs/table1_mnist

Expected (docs/certified_fat.md): the defender accepts the honest round and
rejects the distilled and backdoored ones, whose mean certifiable losses are
8x-5000x the honest model's; about 4-6 min per model for Table 1 and 33 + 13
min for the defended simulation (on / off) on a 2-core CPU.

Presets: ``smoke`` (tiny sizes, for tests).
"""
from launch.configs import mnist_fat


def get_config(arg: str = ''):
  c = mnist_fat.get_config()
  c.unlock()  # the base is locked; this file adds its own keys
  c.init_checkpoint = 'workdirs/mnist_fat'
  c.num_malicious = 175
  c.attack_min_malicious = 3
  c.attack_epochs = 2           # backdoor: epochs over the pooled data
  c.attack_lr = 0.01
  c.attack_batch_size = 64
  c.backdoor_magnitude = 0.1
  c.backdoor_target = 0
  c.backdoor_poison_fraction = 0.25
  c.backdoor_adv_fraction = 0.1
  c.backdoor_warmup_epochs = 1
  c.distill_epochs = 5
  c.distill_lr = 0.1
  c.distill_temperature = 100.0
  c.defender = True
  c.defender_cert_eps = (0.1, 0.15, 0.25)
  c.defender_val_points = 1000
  c.defender_cert_points = 200
  c.defender_pgd_steps = 10
  # The paper's rule (accuracies >= 90% of the last accepted round's, loss
  # within +-10%) rejected 2 of the first 4 honest rounds here: on 200
  # certification points one honest FAT round moves the certifiable loss by
  # up to ~14% and certified accuracy at 0.25 sits near 0. The attacks move
  # the loss 8x-5000x, so a +-50% band and a 0.02 accuracy slack keep every
  # attack out while letting honest rounds through.
  c.defender_loss_tol = 0.5
  c.defender_acc_atol = 0.02
  # Table 1 evaluation (test set; certification set = the first num_cert train points).
  c.table_attacks = 'none,distillation,backdoor'
  c.table_cert_points = 500
  c.table_pgd_points = 1000
  c.table_pgd_steps = 20
  # Defended simulation: rounds after init_checkpoint, attack used.
  c.sim_attack = 'distillation'
  c.sim_rounds = 40
  c.sim_modes = 'on,off'
  c.sim_eval_every = 0          # test-set evaluation every N rounds (0: at the end only)
  if arg == 'smoke':
    shrink_for_smoke(c, client_pool_size=800, num_cert=40, num_val=60, cert_points=20,
                     pgd_points=50)
  elif arg:
    raise ValueError(f'unknown preset {arg!r}; expected "" or "smoke"')
  c.lock()
  return c


def shrink_for_smoke(c, *, client_pool_size: int, num_cert: int, num_val: int,
                     cert_points: int, pgd_points: int):
  """Tiny sizes for tests: an MLP from scratch, 20 clients, 3 rounds, few steps."""
  c.init_checkpoint = ''
  c.model = 'mlp'
  c.num_clients = 20
  c.num_malicious = 8
  c.client_pool_size = client_pool_size
  c.num_cert = num_cert
  c.num_val = num_val
  c.adv_steps = 2
  c.attack_epochs = 1
  c.distill_epochs = 1
  c.defender_val_points = num_val
  c.defender_cert_points = cert_points
  c.table_cert_points = cert_points
  c.table_pgd_points = pgd_points
  c.eval_pgd_points = pgd_points
  c.table_pgd_steps = c.eval_pgd_steps = c.defender_pgd_steps = 3
  c.sim_rounds = c.eval_every = c.checkpoint_every = 3
  return c
