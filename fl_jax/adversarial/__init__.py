"""Adversarial examples (PGD / FGSM with temperature) and training losses."""
from fl_jax.adversarial.pgd import cross_entropy
from fl_jax.adversarial.pgd import fgsm
from fl_jax.adversarial.pgd import pgd
from fl_jax.adversarial.training import adversarial_loss
from fl_jax.adversarial.training import num_adversarial
from fl_jax.adversarial.training import soft_label_loss
from fl_jax.adversarial.training import soft_labels
from fl_jax.adversarial.training import standard_loss
