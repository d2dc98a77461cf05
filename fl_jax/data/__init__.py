"""Data: local IDX / npz files and TFDS sources, held-out splits, partitions.

Host-side NumPy, run once before training; deterministic from integer seeds.
"""
from fl_jax.data.clients import ClientData
from fl_jax.data.clients import label_histogram
from fl_jax.data.clients import make_federated
from fl_jax.data.clients import pad_clients
from fl_jax.data.idx import read_idx
from fl_jax.data.idx import write_idx
from fl_jax.data.partition import partition_dirichlet
from fl_jax.data.partition import partition_iid
from fl_jax.data.sources import DATASET_NAMES
from fl_jax.data.sources import DataNotFoundError
from fl_jax.data.sources import Dataset
from fl_jax.data.sources import dataset_info
from fl_jax.data.sources import load_dataset
from fl_jax.data.splits import holdout_split
from fl_jax.data.edge_sets import EDGE_SOURCE_NAMES
from fl_jax.data.edge_sets import EdgeSource
from fl_jax.data.edge_sets import honest_edge_split
from fl_jax.data.edge_sets import load_ardis
from fl_jax.data.edge_sets import load_edge_source
from fl_jax.data.edge_sets import load_uci_digits
from fl_jax.data.edge_sets import mnist_style
from fl_jax.data.edge_sets import spread_over_clients
