"""The README's Python code blocks run as written."""
import os
import re
import subprocess
import sys

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ReadmeTest(absltest.TestCase):

  def test_python_blocks_run(self):
    with open(os.path.join(REPO, 'README.md')) as f:
      blocks = re.findall(r'```python\n(.*?)```', f.read(), flags=re.S)
    self.assertNotEmpty(blocks)
    for code in blocks:
      out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
      self.assertEqual(out.returncode, 0, out.stderr[-3000:])
      self.assertTrue(out.stdout.strip(), code)   # each block prints its result
    self.assertIn('test accuracy', ''.join(blocks))


if __name__ == '__main__':
  absltest.main()
