"""DeepLab v3: ResNet-101 OS16, multi-grid (1, 2, 4), ASPP (6, 12, 18) + image pooling, VOC.

  python -m deeplab_jax.main --config=configs/v3_voc.py \
      --config.data.root=/path/to/voc --workdir=/tmp/v3_voc

The v3 paper's recipe (section 4.1): crops of 513, batch 16, poly learning rate 0.007 for
30k steps, weight decay 1e-4, BatchNorm decay 0.9997, random scale 0.5-2.0 and flips.
Variants (comma-separated):
  cascade         the "going deeper" model: block4 copied as blocks 5-7 (rates 4, 8, 16 at
                  OS16, multi-grid in each), no ASPP (v3 paper, section 3.2 / table 2)
  context_module  stacked 3x3 convs at rates (1, 1, 2, 4, 8, 16, 1) in place of ASPP
  resnet50        ResNet-50 in place of ResNet-101
  smoke           a tiny model for tests
`cascade` with ASPP beside it: `v3_voc.py:cascade --config.model.context=aspp`.
"""

from configs import common


def get_config(arg=None):
  variant = common.parse_variant(arg, {'cascade', 'context_module', 'resnet50', 'smoke'},
                                 'configs/v3_voc.py')
  config = common.get_base_config()
  config.data.name = 'voc'
  config.data.train_split = 'train_aug'  # VOC train + SBD, 10,582 images
  config.data.crop_size = (513, 513)
  config.model.name = 'deeplabv3'
  config.model.context = 'aspp'
  config.model.output_stride = 16
  config.model.bn_momentum = 0.9997
  config.model.backbone.name = 'resnet50' if 'resnet50' in variant else 'resnet101'
  config.model.backbone.multi_grid = (1, 2, 4)
  config.model.backbone.beta_stem = True  # the public code's ResNet-101 'beta',
  config.model.backbone.layout = 'tfslim'  # with its strides on the last unit
  config.model.aspp.atrous_rates = (6, 12, 18)
  if 'cascade' in variant:
    config.model.backbone.extra_blocks = 3
    config.model.context = 'none'
  if 'context_module' in variant:
    config.model.context = 'context_module'
  config.optim.learning_rate = 0.007
  config.optim.weight_decay = 1e-4
  config.train.batch_size = 16
  config.train.num_steps = 30_000
  config.eval.image_size = (513, 513)
  if 'smoke' in variant:
    common.make_smoke(config)
  return config
