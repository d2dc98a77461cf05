r"""The edge-case attacks x defences table (the paper's Figures 6 / 13), one seed.

A thin alias of ``launch.edge_figures --figure=defences --seeds=1``: the same
config (``launch/configs/edge_case.py``, ``--config.KEY`` overrides), the
same sweep engine and the same outputs (``<workdir>/defences/summary.md`` is
the table, ``curves.png`` the per-round curves). Example::

  python -m launch.edge_case --workdir=workdirs/edge_case
  python -m launch.edge_case --config=launch/configs/edge_case.py:smoke --workdir=/tmp/edge
"""
from absl import app
from absl import flags

from launch import edge_figures

flags.FLAGS.set_default('figure', 'defences')
flags.FLAGS.set_default('seeds', 1)
flags.FLAGS.set_default('workdir', 'workdirs/edge_case')

if __name__ == '__main__':
  app.run(edge_figures.main)
