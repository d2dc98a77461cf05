"""Pure client updates: local SGD epochs as ``lax.scan`` over batches."""
from fl_jax.client.update import ClientBatch
from fl_jax.client.update import ClientMetrics
from fl_jax.client.update import learning_rate
from fl_jax.client.update import LocalSGD
from fl_jax.client.update import make_client_update
