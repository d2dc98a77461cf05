"""Paper networks as pure ``init`` / ``apply`` functions on parameter dicts."""
from fl_jax.models.layers import conv2d
from fl_jax.models.layers import default_conv_impl
from fl_jax.models.registry import get_model
from fl_jax.models.registry import Model
from fl_jax.models.registry import num_params
from fl_jax.models.zoo import MODELS
