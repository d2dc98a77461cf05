"""Every launch takes a locked ml_collections config: a misspelt key is an error naming it."""
import importlib
import os
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAUNCHES = {   # launch module -> the other arguments it needs
    'train': [],
    'certify': ['--workdir=/nonexistent'],
    'experiment': [],
    'stealthy_attack': ['--workdir=/nonexistent'],
    'edge_case': [],
    'edge_figures': [],
    'sweep': ['--sweep=launch/sweeps/seeds_and_clipping.py:smoke'],
}
CONFIGS = ('mnist_fedavg', 'mnist_fat', 'cifar10_fat', 'edge_case', 'table1_mnist',
           'table1_cifar10', 'certify', 'stealthy_attack')


class MisspeltKeyTest(absltest.TestCase):

  def test_every_launch_names_a_misspelt_key(self):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    procs = {name: subprocess.Popen(
        [sys.executable, '-m', f'launch.{name}', *extra, '--config.no_such_kee=1',
        ],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, extra in LAUNCHES.items()}
    for name, p in procs.items():
      out = p.communicate(timeout=300)[0]
      self.assertNotEqual(p.returncode, 0, f'launch.{name} accepted a misspelt key:\n{out[-2000:]}')
      self.assertIn('no_such_kee', out, f'launch.{name}:\n{out[-2000:]}')


class LockedConfigTest(parameterized.TestCase):

  @parameterized.parameters(*CONFIGS)
  def test_config_is_locked(self, name):
    c = importlib.import_module(f'launch.configs.{name}').get_config()
    self.assertTrue(c.is_locked)
    with self.assertRaisesRegex(AttributeError, 'no_such_kee'):
      c.no_such_kee = 1
    with self.assertRaisesRegex(KeyError, 'no_such_kee'):
      c.update(no_such_kee=1)


if __name__ == '__main__':
  absltest.main()
