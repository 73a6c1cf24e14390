"""DeepLab v3+: Xception-65 OS16 on Cityscapes fine (19 classes), crop 769, batch 8.

  python -m deeplab_jax.main --config=configs/v3plus_cityscapes.py \
      --config.data.root=/path/to/cityscapes --workdir=/tmp/cityscapes

The v3+ paper's Cityscapes model (TF model zoo `xception65_cityscapes_trainfine`): separable
ASPP (6, 12, 18) + image pooling and a separable decoder, crops of 769, batch 8, poly
learning rate 0.01 for 90k steps, weight decay 4e-5, BatchNorm decay 0.9997; scored on
whole 1024 x 2048 images. Variants (comma-separated): `resnet101` (ResNet-101 with
multi-grid (1, 2, 4) and plain convs, weight decay 1e-4), `tf_zoo` (the public TF code's
network, which the zoo's `xception65_cityscapes_trainfine` converts into:
`common.use_tf_zoo`), `smoke` (a tiny model for tests).

data.root holds the two official zips or their extracted folders (see docs/data.md).
"""

from configs import common


def get_config(arg=None):
  variant = common.parse_variant(arg, {'resnet101', 'tf_zoo', 'smoke'},
                                 'configs/v3plus_cityscapes.py')
  config = common.get_base_config()
  config.data.name = 'cityscapes'
  config.data.crop_size = (769, 769)
  config.model.name = 'deeplabv3plus'
  config.model.output_stride = 16
  config.model.aspp.atrous_rates = (6, 12, 18)
  config.model.bn_momentum = 0.9997
  if 'resnet101' in variant:
    config.model.backbone.name = 'resnet101'
    config.model.backbone.multi_grid = (1, 2, 4)
    config.model.backbone.beta_stem = True  # the public code's ResNet-101 'beta',
    config.model.backbone.layout = 'tfslim'  # with its strides on the last unit
    config.optim.weight_decay = 1e-4
  else:
    common.use_xception(config, 'xception65')
  config.optim.learning_rate = 0.01
  config.train.batch_size = 8
  config.train.num_steps = 90_000
  config.eval.image_size = (1024, 2048)
  config.eval.batch_size = 8
  if 'tf_zoo' in variant:
    common.use_tf_zoo(config)
  if 'smoke' in variant:
    common.make_smoke(config)
  return config
