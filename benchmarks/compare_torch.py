r"""Train step of torchvision's DeepLabv3 against deeplab_jax's, same model and settings.

  python benchmarks/compare_torch.py --model=resnet50 --crop=129 --batch=2 --steps=5   # CPU
  python benchmarks/compare_torch.py --model=resnet101 --crop=513 --batch=16 \
      --dtype=bfloat16 --steps=30                                                      # GPU

Both sides train torchvision's `deeplabv3_<model>` (ResNet in torchvision's layout, OS8 and ASPP
(12, 24, 36) as torchvision builds it, or OS16 with `--output_stride=16`; `--aux` adds the FCN
auxiliary head) from random weights on the same random batch: SGD with momentum 0.9 and weight
decay 1e-4, pixel cross-entropy (aux weight 0.5). deeplab_jax runs
`configs/v3_torchvision.py` through benchmarks/train_step.py. torchvision runs at its best
where it can: on a GPU, `--dtype=bfloat16` is autocast, with channels_last and torch.compile
(`--no-compile` to skip); on the CPU, float32 eager (its pure-Python models import with
`torchvision._meta_registrations` stubbed, as in the tests).

Each side runs in its own process, so that their memory is measured apart: the device's peak
allocation on a GPU (torch.cuda.max_memory_allocated; JAX's peak_bytes_in_use), the process's
peak resident memory on the CPU (ru_maxrss; it includes each framework's own footprint).
Printed: one JSON object with both sides and the ratios ours / torchvision's (< 1: we are
faster or smaller).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_side(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  cuda = torch.cuda.is_available()
  if not cuda:  # torchvision's compiled operators need a CUDA build; the models do not
    sys.modules.setdefault('torchvision._meta_registrations',
                           types.ModuleType('torchvision._meta_registrations'))
  from torchvision.models import resnet  # pylint: disable=g-import-not-at-top
  from torchvision.models.segmentation import deeplabv3  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  dilation = [False, True, True] if args.output_stride == 8 else [False, False, True]
  backbone = getattr(resnet, args.model)(weights=None, replace_stride_with_dilation=dilation)
  net = deeplabv3._deeplabv3_resnet(backbone, args.num_classes, args.aux)  # pylint: disable=protected-access
  device = torch.device('cuda' if cuda else 'cpu')
  net = net.to(device).train()
  channels_last = cuda
  if channels_last:
    net = net.to(memory_format=torch.channels_last)
  optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
  gen = torch.Generator().manual_seed(0)
  h, w = args.crop
  images = torch.randn(args.batch, 3, h, w, generator=gen).to(device)
  if channels_last:
    images = images.to(memory_format=torch.channels_last)
  labels = torch.randint(0, args.num_classes, (args.batch, h, w), generator=gen).to(device)
  loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
  autocast = cuda and args.dtype == 'bfloat16'

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
      out = net(images)
      loss = loss_fn(out['out'].float(), labels)
      if args.aux:
        loss = loss + 0.5 * loss_fn(out['aux'].float(), labels)
    loss.backward()
    optimizer.step()
    return loss

  compiled = cuda and args.compile
  if compiled:
    step = torch.compile(step)
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  start = time.perf_counter()
  step()
  sync()
  first = time.perf_counter() - start
  for _ in range(args.warmup):
    step()
  sync()
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    loss = step()
    sync()
    times.append(time.perf_counter() - start)
  peak = (torch.cuda.max_memory_allocated() if cuda else
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
  return {'framework': f'torch {torch.__version__}', 'device': str(device),
          'precision': 'bf16 autocast' if autocast else 'float32',
          'channels_last': channels_last, 'torch_compile': compiled,
          'step_seconds': statistics.median(times), 'first_step_seconds': first,
          'images_per_second': args.batch / statistics.median(times),
          'peak_memory_bytes': peak,
          'memory_source': 'cuda max_memory_allocated' if cuda else 'ru_maxrss',
          'loss': float(loss)}


def jax_side(args) -> dict:
  sys.path.insert(0, ROOT)
  sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
  import jax  # pylint: disable=g-import-not-at-top
  import train_step  # pylint: disable=g-import-not-at-top
  from configs import v3_torchvision  # pylint: disable=g-import-not-at-top
  variant = args.model + (',aux' if args.aux else '')
  config = v3_torchvision.get_config(variant)
  config.data.crop_size = tuple(args.crop)
  config.train.batch_size = args.batch
  config.model.dtype = args.dtype
  config.model.output_stride = args.output_stride
  config.optim.learning_rate = 0.01
  config.optim.weight_decay = 1e-4
  result = train_step.benchmark(config, args.steps, args.warmup, num_classes=args.num_classes)
  if jax.default_backend() == 'cpu':  # the same measure as the torch side's
    result['xla_memory_analysis_bytes'] = result['peak_memory_bytes']
    result['peak_memory_bytes'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result['memory_source'] = 'ru_maxrss'
  result['framework'] = f'jax {jax.__version__}'
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', choices=['resnet50', 'resnet101'], default='resnet50')
  parser.add_argument('--aux', action='store_true')
  parser.add_argument('--crop', default='129', help='H or H,W')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--output_stride', type=int, choices=[8, 16], default=8)
  parser.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32')
  parser.add_argument('--num_classes', type=int, default=21)
  parser.add_argument('--no-compile', dest='compile', action='store_false')
  parser.add_argument('--retain_host_memory', choices=['auto', 'true', 'false'], default='auto',
                      help='both sides: keep freed host memory (deeplab_jax/host_memory.py)')
  parser.add_argument('--worker', choices=['torch', 'jax'], help=argparse.SUPPRESS)
  args = parser.parse_args()
  crop = [int(x) for x in args.crop.split(',')]
  args.crop = crop * 2 if len(crop) == 1 else crop
  if args.worker:
    sys.path.insert(0, ROOT)
    from deeplab_jax import host_memory  # pylint: disable=g-import-not-at-top
    from deeplab_jax import xla_flags  # pylint: disable=g-import-not-at-top
    xla_flags.configure_cpu()  # as deeplab_jax.main does, before JAX starts a backend
    host_memory.configure(args.retain_host_memory)  # for torch's CPU allocator as for XLA's
    print(json.dumps(torch_side(args) if args.worker == 'torch' else jax_side(args)))
    return
  sides = {}
  for worker in ('torch', 'jax'):
    cmd = [sys.executable, os.path.abspath(__file__), f'--worker={worker}'] + sys.argv[1:]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
      raise SystemExit(f'error: the {worker} side failed:\n{out.stderr[-3000:]}')
    sides[worker] = json.loads(out.stdout.strip().splitlines()[-1])
  ours, theirs = sides['jax'], sides['torch']
  result = {
      'model': f'deeplabv3_{args.model}' + (' + aux' if args.aux else ''),
      'output_stride': args.output_stride, 'crop': args.crop, 'batch': args.batch,
      'dtype': args.dtype, 'steps': args.steps,
      'step_time_ratio': ours['step_seconds'] / theirs['step_seconds'],
      'memory_ratio': (ours['peak_memory_bytes'] / theirs['peak_memory_bytes']
                       if ours['peak_memory_bytes'] and theirs['peak_memory_bytes'] else None),
      'deeplab_jax': ours, 'torchvision': theirs,
  }
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
