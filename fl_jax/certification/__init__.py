"""Certification of models as they are: DeepZono zonotopes and IBP boxes."""
from fl_jax.certification.domains import clipped_box
from fl_jax.certification.domains import input_box
from fl_jax.certification.domains import Interval
from fl_jax.certification.domains import relu_relaxation
from fl_jax.certification.domains import Zonotope
from fl_jax.certification.domains import zonotope_affine
from fl_jax.certification.domains import zonotope_relu
from fl_jax.certification.propagation import certified_accuracy
from fl_jax.certification.propagation import certify
from fl_jax.certification.propagation import CertResult
from fl_jax.certification.propagation import DOMAINS
from fl_jax.certification.propagation import logit_difference_bounds
from fl_jax.certification.propagation import mean_certifiable_loss
from fl_jax.certification.propagation import propagate
