"""Launch helpers: sweeps as data, configs."""
from absl.testing import absltest

from launch import sweep_lib
from launch.configs import mnist_fat
from launch.configs import mnist_fedavg
from fl_jax.simulation import train as train_lib


class SweepTest(absltest.TestCase):

  def test_product_and_zipped(self):
    self.assertEqual(sweep_lib.product(a=[1, 2], b=['x']), [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}])
    self.assertEqual(sweep_lib.zipped(a=[1, 2], b=[3, 4]), [{'a': 1, 'b': 3}, {'a': 2, 'b': 4}])
    with self.assertRaisesRegex(ValueError, 'equal lengths'):
      sweep_lib.zipped(a=[1, 2], b=[3])
    self.assertEqual(sweep_lib.run_name({'b': 1, 'a': 'x'}), 'a=x,b=1')

  def test_sweep_file_loads(self):
    runs = sweep_lib.load_sweep('launch/sweeps/aggregators.py:smoke')
    self.assertEqual(runs, [{'aggregator': 'mean'}, {'aggregator': 'median'}])


class ConfigTest(absltest.TestCase):

  def test_configs_validate(self):
    for cfg in (mnist_fedavg.get_config(), mnist_fedavg.get_config('smoke'),
                mnist_fat.get_config(), mnist_fat.get_config('short')):
      train_lib.validate_config(train_lib.config_to_dict(cfg))

  def test_unknown_preset(self):
    with self.assertRaisesRegex(ValueError, 'nope'):
      mnist_fedavg.get_config('nope')


if __name__ == '__main__':
  absltest.main()
