r"""Config of ``launch.stealthy_attack``: the certified-FAT paper's stealthy attacks.

The attacker pools the data of ``num_malicious`` of the trained run's clients
and crafts, from the global model of a ``launch.train`` workdir: a stripe
backdoor (``backdoor``), a defensively distilled model (``distill``), and the
distilled model refined against the defender's certification check
(``adaptive``, the paper's Section 4 / Figure 1). Presets:

* ``''`` -- the paper's MNIST settings. Command (about 15 min on a 2-core CPU
  for backdoor + distill with the injection into the federation)::

    python -m launch.stealthy_attack --workdir=workdirs/mnist_fat

  Expected on the FAT model of ``launch/configs/mnist_fat.py``: the backdoored
  model keeps ~97% clean accuracy with >90% backdoor success; the distilled
  model looks more PGD-robust at T = 1 than the global model and falls to
  ~0% under PGD crafted at T = 100 (docs/certified_fat.md).
* ``adaptive`` -- only the adaptive attacker, fitting 10 and 100 points::

    python -m launch.stealthy_attack --workdir=workdirs/mnist_fat \
        --config=launch/configs/stealthy_attack.py:adaptive

* ``smoke`` -- seconds-long settings for tests.

Every key can be overridden with ``--config.KEY=VALUE``; the config is locked,
so a misspelt key is an error naming it.
"""
import ml_collections

ATTACKS = ('backdoor', 'distill', 'adaptive')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.attacks = 'backdoor,distill'   # comma-separated subset of ATTACKS
  c.num_malicious = 175            # malicious clients (of the run's num_clients)
  c.pool_seed = 0                  # seed of the malicious pool
  c.seed = 0                       # attacker's training seed
  # Backdoor (stripe trigger).
  c.trigger_magnitude = 0.1        # L-inf magnitude of the stripes
  c.stripe_width = 1               # pixel columns per stripe
  c.stripe_sign = 'alternating'    # 'alternating' (+b/-b columns) or 'positive' (+b/0)
  c.target = 0                     # backdoor target class
  c.poison_fraction = 0.25         # triggered share of each batch
  c.adv_fraction = 0.1             # PGD share of each batch
  c.backdoor_epochs = 2            # joint (trigger + PGD) epochs
  c.backdoor_warmup_epochs = 1     # poisoning-only epochs before the joint ones
  c.backdoor_lr = 0.01
  c.adv_steps = 7                  # PGD steps in adversarial training
  c.adv_step_size = 0.07
  # Defensive distillation.
  c.temperature = 100.0
  c.teacher_epochs = 5
  c.student_epochs = 5
  c.distill_lr = 0.1               # teacher / student learning rate
  c.distill_init = 'global'        # 'global' (start from the global model) or 'scratch'
  # Adaptive attack (refinement of the distilled model against the certification check).
  c.adaptive_points = '10,100'     # comma-separated: certification points the attacker fits
  c.adaptive_mode = 'certify'      # 'certify' the points, or 'match' the global model's loss
  c.adaptive_eps = 0.1             # certification radius
  c.adaptive_weight = 1.0          # weight of the certification penalty
  c.refine_epochs = 1
  c.refine_lr = 0.01
  c.refine_examples = 2048         # pooled examples used by the refinement
  c.defender_points = 200          # certification points checked per model
  c.cert_chunk = 50                # points per certification chunk
  c.batch_size = 64                # attacker's batch size
  c.momentum = 0.9
  # Evaluation and injection into the federation.
  c.eps = 0.25                     # PGD radius of the evaluation
  c.pgd_steps = 20
  c.eval_points = 1000             # test points for PGD
  c.fl_rounds = 40                 # max rounds to wait for the attack to fire (0: no injection)
  c.min_malicious = 3              # malicious clients needed in a round
  if arg == 'adaptive':
    c.attacks = 'adaptive'
  elif arg == 'smoke':
    c.update(attacks='backdoor,distill,adaptive', backdoor_epochs=1, backdoor_warmup_epochs=0,
             teacher_epochs=1, student_epochs=1, adaptive_points='4', refine_examples=64,
             defender_points=8, cert_chunk=4, pgd_steps=2, eval_points=50, fl_rounds=3,
             min_malicious=1, adv_steps=2, num_malicious=10)
  elif arg:
    raise ValueError(f'unknown preset {arg!r}; expected "", "adaptive" or "smoke"')
  c.lock()
  return c
