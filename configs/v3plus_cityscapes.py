"""DeepLabv3+ ResNet-101 on Cityscapes fine (19 classes), OS16, crop 769, batch 8.

  python -m deeplab_jax.main --config=configs/v3plus_cityscapes.py \
      --config.data.root=/path/to/cityscapes --workdir=/tmp/cityscapes

The Cityscapes reader comes with the data sets issue; until then this config stops at once
with a one-line message saying so. The Xception-65 backbone of the paper's headline figure
comes with the model family issue.
"""

from configs import common


def get_config(arg=None):
  config = common.get_base_config()
  config.data.name = 'cityscapes'
  config.data.crop_size = (769, 769)
  config.model.backbone.name = 'resnet101'
  config.model.output_stride = 16
  config.model.aspp.atrous_rates = (6, 12, 18)
  config.model.bn_momentum = 0.9997
  config.optim.learning_rate = 0.01
  config.optim.weight_decay = 1e-4
  config.train.batch_size = 8
  config.train.num_steps = 90_000
  config.eval.image_size = (1024, 2048)
  config.eval.batch_size = 8
  if arg == 'smoke':
    config.model.width_multiplier = 0.125
    config.data.crop_size = (65, 65)
    config.eval.image_size = (128, 256)
    config.train.num_steps = 2
  elif arg:
    raise ValueError(f'configs/v3plus_cityscapes.py: unknown variant {arg!r}; use "smoke" or none.')
  return config
