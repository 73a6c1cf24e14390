"""DeepLab v3: ResNet-101 OS16, multi-grid (1, 2, 4), ASPP + image pooling, Cityscapes fine.

  python -m deeplab_jax.main --config=configs/v3_cityscapes.py \
      --config.data.root=/path/to/cityscapes --workdir=/tmp/v3_cityscapes

The v3 paper's Cityscapes recipe (section 4.2 and the public code): crops of 769, batch 8,
poly learning rate 0.01 for 90k steps, weight decay 1e-4, BatchNorm decay 0.9997; scored
on whole 1024 x 2048 images. Variant `:smoke` is a tiny model for tests.
"""

from configs import common


def get_config(arg=None):
  variant = common.parse_variant(arg, {'smoke'}, 'configs/v3_cityscapes.py')
  config = common.get_base_config()
  config.data.name = 'cityscapes'
  config.data.crop_size = (769, 769)
  config.model.name = 'deeplabv3'
  config.model.output_stride = 16
  config.model.bn_momentum = 0.9997
  config.model.backbone.name = 'resnet101'
  config.model.backbone.multi_grid = (1, 2, 4)
  config.model.backbone.beta_stem = True  # the public code's ResNet-101 'beta',
  config.model.backbone.layout = 'tfslim'  # with its strides on the last unit
  config.model.aspp.atrous_rates = (6, 12, 18)
  config.optim.learning_rate = 0.01
  config.optim.weight_decay = 1e-4
  config.train.batch_size = 8
  config.train.num_steps = 90_000
  config.eval.image_size = (1024, 2048)
  if 'smoke' in variant:
    common.make_smoke(config)
  return config
