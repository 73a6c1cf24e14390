r"""Where the time of benchmarks/jpu.py's two networks goes: each part timed on its own.

  python benchmarks/jpu_modules.py [--crop=512] [--steps=5] [--width=1.0] [--units=] \
      [--depthwise_taps=false]

For FastFCN's side (ResNet-50 at output stride 32 + JPU) and the dilated side (ResNet-50 at
output stride 8), both configs/fastfcn_ade20k.py's as in benchmarks/jpu.py: the backbone, the
JPU neck and the ASPP head (the same on both sides: 2048 channels at stride 8), and inside JPU
its three input convs, and each separable conv's depthwise and pointwise halves. Each part is
timed on random inputs of the shapes the full network gives it, batch 1, as a jitted forward
pass in eval mode and as a jitted forward + backward pass in train mode (gradients of the
output's sum with respect to the part's parameters and input; BatchNorm on batch statistics).
Printed: one JSON object with each part's multiply-adds, median times, and the rate
(multiply-adds a second) each achieves, so that a part that runs far below the others' rate
stands out.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax import host_memory
from deeplab_jax import xla_flags
from deeplab_jax.models import layers
from deeplab_jax.models import cpu_kernels
from deeplab_jax.models import registry
import jpu as jpu_benchmark

FLAGS = flags.FLAGS


def median_seconds(fn, *args, steps: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and run once
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def conv_macs(module, variables, inputs) -> int:
  """Multiply-adds of the convolutions in one eval forward pass of
  `module`, from the shapes flax's interceptor sees: output pixels x kernel taps x input
  channels per group x output channels."""
  total = [0]

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    conv = context.module
    if isinstance(conv, nn.Conv) and context.method_name == '__call__':
      taps = int(np.prod(conv.kernel_size)) * args[0].shape[-1] // conv.feature_group_count
      total[0] += int(np.prod(out.shape[:-1])) * taps * conv.features
    return out

  with nn.intercept_methods(count):
    jax.eval_shape(lambda v: module.apply(v, *inputs, train=False), variables)
  return total[0]


def time_part(module, inputs, steps: int) -> dict:
  """A part's multiply-adds and its median eval-forward and train forward+backward seconds."""
  variables = jax.jit(lambda *x: module.init(jax.random.key(0), *x, train=False))(*inputs)
  params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}

  def total(out):
    return sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(out))

  forward = jax.jit(lambda v, *x: module.apply(v, *x, train=False))

  def loss(p, *x):
    out, _ = module.apply({'params': p, **state}, *x, train=True, mutable=['batch_stats'],
                          rngs={'dropout': jax.random.key(1)})
    return total(out)

  train = jax.jit(jax.grad(loss, argnums=tuple(range(len(inputs) + 1))))
  macs = conv_macs(module, variables, inputs)
  fwd = median_seconds(forward, variables, *inputs, steps=steps)
  step = median_seconds(train, params, *inputs, steps=steps)
  return {'macs': macs, 'forward_seconds': fwd, 'train_seconds': step,
          'forward_gmacs_per_second': macs / fwd / 1e9,
          'train_gmacs_per_second': 3 * macs / step / 1e9}


class _ConvBN(nn.Module):
  """One of JPU's convs and its BatchNorm (groups = channels: a depthwise half)."""
  features: int
  kernel_size: int
  rate: int = 1
  groups: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    k = self.kernel_size
    x = layers.Conv(self.features, (k, k), padding=layers.atrous_padding(k, self.rate),
                    kernel_dilation=(self.rate, self.rate), feature_group_count=self.groups,
                    use_bias=False)(x)
    return layers.make_norm(train, 0.99, 1e-5, jnp.float32)()(x)


def parts(config, steps: int) -> dict:
  model = registry.build_model(config.model, jpu_benchmark.NUM_CLASSES)
  crop = config.data.crop_size
  rng = np.random.default_rng(0)
  normal = lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  image = normal((1, *crop, 3))

  class Backbone(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      norm = layers.make_norm(train, 0.99, 1e-5, jnp.float32)
      return model.backbone(norm=norm, dtype=jnp.float32)(x, train=train)

  out = {'backbone': time_part(Backbone(), (image,), steps)}
  endpoints = jax.eval_shape(lambda x: Backbone().init_with_output(
      jax.random.key(0), x)[0], image)
  if model.neck is not None:
    maps = tuple(normal(endpoints[e].shape) for e in model.neck_endpoints)

    class Neck(nn.Module):
      @nn.compact
      def __call__(self, *x, train: bool = False):
        norm = layers.make_norm(train, 0.99, 1e-5, jnp.float32)
        return model.neck(norm=norm, dtype=jnp.float32)(tuple(x), train=train)

    out['jpu'] = time_part(Neck(), maps, steps)
    neck = model.neck(norm=layers.make_norm(False, 0.99, 1e-5, jnp.float32))
    width = neck.features
    for i, m in enumerate(maps):
      out[f'jpu.conv{i}'] = time_part(_ConvBN(width, 3), (m,), steps)
    stride8 = normal((1, *maps[0].shape[1:3], width * len(maps)))
    channels = stride8.shape[-1]
    for d in neck.dilations:
      out[f'jpu.dilation{d}.depthwise'] = time_part(
          _ConvBN(channels, 3, rate=d, groups=channels), (stride8,), steps)
      out[f'jpu.dilation{d}.pointwise'] = time_part(_ConvBN(width, 1), (stride8,), steps)
    features = normal((1, *maps[0].shape[1:3], width * len(neck.dilations)))
  else:
    features = normal(endpoints['features'].shape)

  class Head(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      norm = layers.make_norm(train, 0.99, 1e-5, jnp.float32)
      y = model.context(norm=norm, dtype=jnp.float32)(x, train=train)
      return layers.Conv(jpu_benchmark.NUM_CLASSES, (1, 1))(y)

  out['head'] = time_part(Head(), (features,), steps)
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  host_memory.configure('auto')
  cpu_kernels.DEPTHWISE_TAPS = FLAGS.depthwise_taps
  units = tuple(int(u) for u in FLAGS.units)
  result = {'crop': FLAGS.crop, 'width': FLAGS.width, 'device': jax.devices()[0].device_kind}
  for name, config in jpu_benchmark.configs(FLAGS.crop, 1, FLAGS.width, 'float32',
                                            units).items():
    result[name] = parts(config, FLAGS.steps)
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  xla_flags.configure_cpu()
  flags.DEFINE_integer('crop', 512, 'Square input size.')
  flags.DEFINE_integer('steps', 5, 'Timed runs of each part (after one untimed).')
  flags.DEFINE_float('width', 1.0, 'model.width_multiplier (below 1: a narrow dry run).')
  flags.DEFINE_list('units', [], 'ResNet units per block (empty: ResNet-50\'s).')
  flags.DEFINE_bool('depthwise_taps', True, 'On the CPU, depthwise convs as sums of taps '
                    '(models/cpu_kernels.py); false: XLA\'s grouped convolution.')
  app.run(main)
