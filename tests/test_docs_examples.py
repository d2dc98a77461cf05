"""The code blocks of docs/extending.md run, in order, as one script.

Also checks the import layering that docs/design.md states: no module imports
one of a higher layer.
"""
import ast
import os
import re
import subprocess
import sys

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The layers of docs/design.md, lowest first. A unit is a package of fl_jax, a
# module of fl_jax.simulation, or a top-level folder.
LAYERS = (
    ('types', 'tree_math'),
    ('data', 'models', 'adversarial', 'aggregators', 'certification'),
    ('client', 'metrics'),
    ('simulation.round', 'simulation.__init__'),
    ('attacks',),
    ('defender',),
    ('simulation.checkpoint', 'simulation.distributed', 'simulation.edge_task',
     'simulation.train', 'simulation.batch'),
    ('launch',),
    ('benchmarks',),
)
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _unit(module: str):
  parts = module.split('.')
  if parts[0] in ('launch', 'benchmarks'):
    return parts[0]
  if parts[0] != 'fl_jax' or len(parts) == 1:
    return None
  if parts[1] == 'simulation':
    return 'simulation.' + parts[2] if len(parts) > 2 else 'simulation.__init__'
  return parts[1]


def _imports(path: str):
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      for a in node.names:
        yield node.lineno, a.name
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      if node.module in ('fl_jax', 'fl_jax.simulation'):
        for a in node.names:
          name = f'{node.module}.{a.name}'
          yield node.lineno, name if _unit(name) in LAYER_OF else node.module
      else:
        yield node.lineno, node.module


class DocsExamplesTest(absltest.TestCase):

  def test_extending_blocks_run(self):
    with open(os.path.join(REPO, 'docs', 'extending.md')) as f:
      blocks = re.findall(r'```python\n(.*?)```', f.read(), flags=re.S)
    self.assertGreaterEqual(len(blocks), 5)
    script = '\n\n'.join(blocks)
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    out = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True,
                         text=True, timeout=600, env=env)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    for line in ('plain-JAX MLP', 'flax.linen MLP', 'registered NNX model',
                 'smallest_norms_mean', 'sign flip vs FedAvg', 'pooled sign flip'):
      self.assertIn(line, out.stdout)

  def test_layering(self):
    bad = []
    for top in ('fl_jax', 'launch', 'benchmarks'):
      for dirpath, _, files in os.walk(os.path.join(REPO, top)):
        for f in files:
          if not f.endswith('.py'):
            continue
          path = os.path.join(dirpath, f)
          module = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
          module = module.removesuffix('.__init__')
          src = _unit(module)
          if src is None:
            continue
          self.assertIn(src, LAYER_OF, f'{path}: add its unit to LAYERS and docs/design.md')
          for lineno, name in _imports(path):
            dst = _unit(name)
            if dst is None or dst == src:
              continue
            self.assertIn(dst, LAYER_OF, f'{path}:{lineno} imports {name}')
            if LAYER_OF[dst] > LAYER_OF[src]:
              bad.append(f'{os.path.relpath(path, REPO)}:{lineno} ({src}) imports {name} '
                         f'({dst})')
    self.assertEmpty(bad, 'imports against the layering of docs/design.md:\n' + '\n'.join(bad))


if __name__ == '__main__':
  absltest.main()
