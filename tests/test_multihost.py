"""Two processes on localhost (jax.distributed, CPU collectives) equal one process."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
import numpy as np

from fl_jax.simulation import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _sweep(workdir, *extra, devices=2):
  # The smoke sweep: 2 clipping bounds x 2 seeds, one vectorized group of 4 runs.
  return [sys.executable, '-m', 'launch.sweep',
          '--sweep=launch/sweeps/seeds_and_clipping.py:smoke',
          '--config=launch/configs/mnist_fedavg.py:smoke', '--config.rounds=4',
          '--config.eval_every=2', f'--workdir={workdir}', '--block_evals=1',
          f'--devices={devices}', *extra]


def _env(devices):
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def _job(testcase, one_process, two_process_args):
  """Runs ``one_process`` (argv, 1 device) and a two-process job side by side.

  ``two_process_args(flags)`` gives the argv of each of the two processes (2
  CPU devices each, ``jax.distributed`` on localhost) from its job flags.
  Returns the three outputs after checking that every process succeeded.
  """
  addr = f'localhost:{_free_port()}'
  spawn = lambda argv, devices: subprocess.Popen(
      argv, cwd=REPO, env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  procs = [spawn(one_process, 1)] + [
      spawn(two_process_args([f'--coordinator_address={addr}', '--num_processes=2',
                              f'--process_id={i}', '--init_timeout=120']), 2)
      for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    testcase.assertEqual(p.returncode, 0, out[-3000:])
  return outs


def _results(workdir):
  with open(os.path.join(workdir, 'sweep_results.jsonl')) as f:
    return {r['run']: r['final'] for r in map(json.loads, f)}


def _params(workdir, run):
  with np.load(os.path.join(workdir, run, 'checkpoint.npz')) as z:
    return {k: z[k] for k in z.files if 'params' in k}


class TwoProcessTest(absltest.TestCase):

  def test_sweep_over_two_processes_equals_one_process(self):
    d = tempfile.mkdtemp()
    one = os.path.join(d, 'one')
    two = os.path.join(d, 'two')
    _, out0, out1 = _job(self, _sweep(one, devices=1), lambda job: _sweep(two, *job, devices=-1))
    self.assertIn('process 0 of 2, 2 local / 4 cpu devices', out0)
    self.assertIn('runs split over 4 cpu devices', out0)
    self.assertNotIn('run-rounds/s', out1)  # only process 0 reports and writes
    a, b = _results(one), _results(two)
    self.assertEqual(sorted(a), sorted(b))
    self.assertLen(a, 4)
    for run in a:
      self.assertEqual(a[run]['round'], 4)
      np.testing.assert_allclose(a[run]['test_accuracy'], b[run]['test_accuracy'], atol=1e-6)
      pa, pb = _params(one, run), _params(two, run)
      self.assertEqual(sorted(pa), sorted(pb))
      for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], rtol=1e-5, atol=1e-6, err_msg=k)

  def test_training_run_over_two_processes_equals_one_process(self):
    # One run whose sampled clients split over the 4 devices of two processes.
    d = tempfile.mkdtemp()
    args = [sys.executable, '-m', 'launch.train', '--config=launch/configs/mnist_fedavg.py:smoke',
            '--config.rounds=3', '--config.eval_every=3', '--config.aggregator=median']
    _, out0, out1 = _job(self, args + [f'--workdir={d}/one'],
                         lambda job: args + [f'--workdir={d}/two', '--config.client_devices=-1',
                                             *job])
    self.assertIn('process 0 of 2, 2 local / 4 cpu devices', out0)
    self.assertNotIn('test_acc', out1)   # process 1 neither reports nor writes
    pa, pb = _params(d, 'one'), _params(d, 'two')
    self.assertNotEmpty(pa)
    for k in pa:
      np.testing.assert_allclose(pa[k], pb[k], rtol=1e-5, atol=1e-6, err_msg=k)
    with open(os.path.join(d, 'one', 'summary.json')) as f, \
         open(os.path.join(d, 'two', 'summary.json')) as g:
      np.testing.assert_allclose(json.load(f)['test_accuracy'], json.load(g)['test_accuracy'],
                                 atol=1e-6)


class BadJobTest(absltest.TestCase):

  def test_process_id_out_of_range(self):
    for pid in (2, -1, None):
      with self.assertRaisesRegex(ValueError, rf'process_id={pid}.*\[0, 2\)'):
        distributed.initialize('localhost:1234', 2, pid)

  def test_bad_address_and_counts(self):
    with self.assertRaisesRegex(ValueError, 'coordinator_address=.localhost.*host:port'):
      distributed.initialize('localhost', 2, 1)
    with self.assertRaisesRegex(ValueError, 'num_processes=0'):
      distributed.initialize('localhost:1234', 0, 0)
    with self.assertRaisesRegex(ValueError, 'needs a coordinator_address'):
      distributed.initialize(None, 2, 1)
    with self.assertRaisesRegex(ValueError, 'timeout_s=0'):
      distributed.initialize('localhost:1234', 2, 1, timeout_s=0)
    self.assertFalse(distributed.initialize())  # no job given: one process, nothing done
    self.assertFalse(distributed.initialize(None, 1, 0))

  def test_unreachable_coordinator_is_an_error_not_a_hang(self):
    addr = f'localhost:{_free_port()}'   # nothing listens there
    t = time.monotonic()
    with self.assertRaisesRegex(ConnectionError, f'{addr} is unreachable after 1 s'):
      distributed.initialize(addr, 2, 1, timeout_s=1.0)
    self.assertLess(time.monotonic() - t, 10.0)

  def test_one_process_to_host_and_writer(self):
    self.assertTrue(distributed.is_main_process())
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    out = distributed.to_host({'a': jnp.arange(3)})
    self.assertIsInstance(out['a'], np.ndarray)
    np.testing.assert_array_equal(out['a'], [0, 1, 2])


if __name__ == '__main__':
  absltest.main()
