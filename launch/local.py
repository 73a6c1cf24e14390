"""Runs N processes of deeplab_jax.main on 127.0.0.1, each with forced CPU devices.

Tries a TPU pod's or GPU cluster's multi-process code path on one machine:

  python launch/local.py --num_processes=2 --devices_per_process=2 -- \
      --config=configs/quickstart.py:smoke --workdir=/tmp/local2

Every process gets the same arguments after `--`. If any process fails, the others are
stopped, and the exit code is the first failure's.
"""

import argparse
import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=1)
  parser.add_argument('--timeout', type=float, default=1800, help='seconds before all are stopped')
  parser.add_argument('main_args', nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  main_args = [a for a in args.main_args if a != '--']
  address = f'127.0.0.1:{free_port()}'
  # The caller's XLA_FLAGS are kept; only the forced device count is replaced.
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  flags.append(f'--xla_force_host_platform_device_count={args.devices_per_process}')
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=' '.join(flags))
  procs = [subprocess.Popen([sys.executable, '-m', 'deeplab_jax.main', *main_args,
                             f'--coordinator_address={address}',
                             f'--num_processes={args.num_processes}', f'--process_id={i}'],
                            env=env)
           for i in range(args.num_processes)]
  deadline = time.time() + args.timeout
  code = 0
  while any(p.poll() is None for p in procs):
    failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
    if failed or time.time() > deadline:
      code = failed[0] if failed else 124
      for p in procs:
        if p.poll() is None:
          p.kill()
      break
    time.sleep(0.5)
  return code or next((p.returncode for p in procs if p.returncode), 0)


if __name__ == '__main__':
  sys.exit(main())
