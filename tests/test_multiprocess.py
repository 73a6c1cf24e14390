"""Several processes on 127.0.0.1 (jax.distributed, gloo) train the same steps as one process,
their checkpoint resumes in one process, and a dead or frozen peer stops the others."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

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
  """2 processes x 1 device train as 1 process x 2 devices, and resume in 1 process. (4 x 1
  and 2 x 2 processes agreed too, when this test also ran them; left out to keep the suite
  short: `python launch/local.py --num_processes=4 ...` runs them by hand.)"""
  one, evals_one = run(1, 2, tmp_path / 'one', cache_dir)
  assert sorted(one) == [1, 2, 3, 4], one
  miou = lambda s: float(re.search(r'"miou": ([0-9.]+)', s).group(1))
  many, evals_many = run(2, 1, tmp_path / 'p2', cache_dir)
  assert sorted(many) == sorted(one)
  for step in one:
    assert many[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), step
  assert miou(evals_many) == pytest.approx(miou(evals_one), abs=1e-4)
  # The two processes' checkpoint at step 2 resumes in one process with 2 devices.
  two_dir = tmp_path / 'p2'
  shutil.rmtree(two_dir / 'checkpoints' / '4')
  os.remove(two_dir / 'evals.jsonl')
  resumed, _ = run(1, 2, two_dir, cache_dir)
  assert sorted(resumed) == [3, 4]
  for step in resumed:
    assert resumed[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize('how', ['killed', 'frozen'])
def test_a_dead_peer_stops_the_others(tmp_path, cache_dir, how):
  """Process 1 is SIGKILLed (its collectives fail at once) or SIGSTOPped (nothing fails; JAX's
  heartbeat finds it) during training: process 0 exits non-zero within seconds, not hangs."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    address = f'127.0.0.1:{s.getsockname()[1]}'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  args = ['--config=configs/quickstart.py:smoke', f'--workdir={tmp_path}',
          f'--config.data.cache_dir={cache_dir}', '--config.train.num_steps=100000',
          '--config.train.log_every_steps=1', f'--coordinator_address={address}',
          '--num_processes=2', '--heartbeat_timeout_seconds=10']
  logs = [tmp_path / f'process{i}.log' for i in range(2)]
  procs = [subprocess.Popen([sys.executable, '-m', 'deeplab_jax.main', *args,
                             f'--process_id={i}'], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(logs[i], 'w'))
           for i in range(2)]
  try:
    deadline = time.time() + 300
    while not losses_of(logs[0].read_text()):  # wait until both are inside the training loop
      assert time.time() < deadline and procs[0].poll() is None, logs[0].read_text()[-3000:]
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGKILL if how == 'killed' else signal.SIGSTOP)
    stopped = time.time()
    code = procs[0].wait(timeout=60)
    elapsed = time.time() - stopped
  finally:
    for p in procs:
      p.kill()
      p.wait()
  assert code != 0
  # Killed: the next collective fails (well under a second). Frozen: the 10 s heartbeat.
  assert elapsed < (10 if how == 'killed' else 30), elapsed
