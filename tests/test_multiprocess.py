"""Two processes on 127.0.0.1 (jax.distributed, gloo) train the same steps as one process, and
their checkpoint resumes in one process."""

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def losses_of(log: str):
  """{step: loss} from the train/loss lines that process 0's logging writer prints."""
  return {int(m.group(1)): float(m.group(2))
          for m in re.finditer(r'\[(\d+)\] .*train/loss=([0-9.eE+-]+)', log)}


def run(num_processes, devices_per_process, workdir, cache_dir):
  args = ['--config=configs/quickstart.py:smoke', f'--workdir={workdir}',
          f'--config.data.cache_dir={cache_dir}', '--config.train.num_steps=4',
          '--config.train.log_every_steps=1', '--config.train.eval_every_steps=4',
          '--config.train.checkpoint_every_steps=2', '--config.model.aspp.dropout_rate=0.0']
  cmd = [sys.executable, 'launch/local.py', f'--num_processes={num_processes}',
         f'--devices_per_process={devices_per_process}', '--timeout=500', '--', *args]
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return losses_of(result.stderr), open(os.path.join(workdir, 'evals.jsonl')).read()


def test_two_processes_agree_with_one(tmp_path, cache_dir):
  one, evals_one = run(1, 4, tmp_path / 'one', cache_dir)
  two, evals_two = run(2, 2, tmp_path / 'two', cache_dir)
  assert sorted(one) == [1, 2, 3, 4], one
  assert sorted(two) == sorted(one)
  for step in one:
    assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6)
  miou = lambda s: float(re.search(r'"miou": ([0-9.]+)', s).group(1))
  assert miou(evals_two) == pytest.approx(miou(evals_one), abs=1e-4)
  # The two processes' checkpoint at step 2 resumes in one process with 4 devices.
  two_dir = tmp_path / 'two'
  shutil.rmtree(two_dir / 'checkpoints' / '4')
  os.remove(two_dir / 'evals.jsonl')
  resumed, _ = run(1, 4, two_dir, cache_dir)
  assert sorted(resumed) == [3, 4]
  for step in resumed:
    assert resumed[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6)
