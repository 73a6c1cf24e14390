"""FastFCN on ADE20K SceneParsing (150 classes): ResNet-50 at output stride 32 + JPU + ASPP head.

  python -m deeplab_jax.main --config=configs/fastfcn_ade20k.py \
      --config.data.root=/path/to/ADEChallengeData2016 --workdir=/tmp/fastfcn

The network of the official code (wuhuikai/FastFCN, from PyTorch-Encoding): ResNet with the deep
3x3 stem and no dilation (output stride 32, multi-grid off), Joint Pyramid Upsampling on its
stride-8, -16 and -32 features (models/jpu.py: 2048 channels at stride 8), and its DeepLabV3
head: ASPP at the stride-8 rates (12, 24, 36) with image pooling, 256 channels, then a 3x3 conv
(`aspp.output_conv`) and the classifier; an auxiliary FCN head on the stride-16 features
(1024 -> 256 channels) at loss weight 0.2. The recipe (its option.py for ADE20K): SGD momentum
0.9, learning rate 0.01 at batch 16, poly power 0.9, weight decay 1e-4, 120 epochs of the 20,210
training images (151,575 steps), crops of 480 from images scaled by 0.5 to 2.0, flips.
What differs, and why: the official code scales each image's short side to a random length in
[260, 1040] (0.5 to 2 x its base size 520); here each image is scaled by a random factor in
[0.5, 2] of its own size, as every config here does; and its Gaussian-blur augmentation is not
done here. The head, JPU and auxiliary head train at 10 x the backbone's rate, as the official
code's parameter groups (`optim.lr_multipliers`; the backbone starts from ImageNet weights there:
`init_from`, docs/weights.md).

Variants: `fcn` (FCN's head, 2048 -> 512 -> classes, in place of the ASPP head), `r101`
(ResNet-101), `smoke` (a tiny model the tests train for two steps), and `cpu` (with `dev`): the
CamVid side-by-side's FastFCN, configs/v3plus_camvid.py:cpu's recipe, data, budget (1600 steps)
and evaluation with this network in place of v3+: the same small ResNet-50 (2-2-3-2 units,
x0.375) undilated with the deep stem at output stride 32, JPU (192 channels a branch), and the
ASPP head at that recipe's rates doubled for stride 8 (6, 12, 18), 48 channels; the auxiliary
head as above. Everything trains from scratch there, so one learning rate serves all modules.
"""

from configs import common
from configs import v3plus_camvid


def get_config(arg=None):
  words = common.parse_variant(arg, {'fcn', 'r101', 'smoke', 'cpu', 'dev'},
                               'configs/fastfcn_ade20k.py')
  for pair in ({'cpu', 'smoke'}, {'cpu', 'r101'}):
    if pair <= words:
      raise ValueError(f'configs/fastfcn_ade20k.py: "{min(pair)}" and "{max(pair)}" do not '
                       'combine.')
  if 'dev' in words and 'cpu' not in words:
    raise ValueError('configs/fastfcn_ade20k.py: "dev" is a CamVid split: use it with "cpu".')
  if 'cpu' in words:
    return _camvid_cpu(words)
  config = common.get_base_config()
  config.data.name = 'ade20k'
  config.data.crop_size = (480, 480)
  config.data.min_scale = 0.5
  config.data.max_scale = 2.0
  config.model.backbone.name = 'resnet101' if 'r101' in words else 'resnet50'
  _fastfcn(config, words, rates=(12, 24, 36))  # the head reads stride-8 features
  config.optim.learning_rate = 0.01
  head = ('fcn',) if 'fcn' in words else ('aspp', 'classifier')
  config.optim.lr_multipliers = tuple((m, 10.0) for m in ('jpu', *head, 'aux_head'))
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4
  config.train.batch_size = 16
  config.train.num_steps = 151_575
  config.train.eval_every_steps = 10_000
  config.eval.image_size = (513, 513)
  if 'smoke' in words:
    common.make_smoke(config)
  return config


def _fastfcn(config, words, rates):
  """FastFCN's network on config's ResNet: deep stem, undilated (multi-grid all 1) at output
  stride 32, JPU, the ASPP head at `rates` with its 3x3 output conv (or FCN's head), and the
  auxiliary head on block3 at weight 0.2."""
  config.model.name = 'deeplabv3'
  config.model.backbone.beta_stem = True
  config.model.backbone.multi_grid = (1,) * len(config.model.backbone.multi_grid)
  config.model.output_stride = 32
  config.model.neck = 'jpu'
  config.model.context = 'fcn' if 'fcn' in words else 'aspp'
  config.model.aspp.atrous_rates = rates
  config.model.aspp.output_conv = True
  config.model.aux_head.endpoint = 'block3'
  config.model.aux_head.loss_weight = 0.2


def _camvid_cpu(words):
  """configs/v3plus_camvid.py:cpu with FastFCN's network (the module docstring)."""
  config = v3plus_camvid.get_config('cpu,dev' if 'dev' in words else 'cpu')
  _fastfcn(config, words, rates=(6, 12, 18))  # the recipe's (3, 6, 9) at stride 8
  return config
