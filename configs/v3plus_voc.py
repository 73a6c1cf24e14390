"""DeepLab v3+: Xception-65 OS16, separable ASPP (6, 12, 18) and decoder, on PASCAL VOC.

  python -m deeplab_jax.main --config=configs/v3plus_voc.py \
      --config.data.root=/path/to/voc --workdir=/tmp/v3plus_voc

The v3+ paper's recipe (section 4): crops of 513, batch 16, poly learning rate 0.007 for
30k steps, weight decay 4e-5 (Xception) or 1e-4 (ResNet), BatchNorm decay 0.9997.
Variants (comma-separated): `resnet101` (ResNet-101, multi-grid (1, 2, 4), plain convs:
the paper's table 3 model), `xception71`, `tf_zoo` (the public TF code's network, which the
model zoo's checkpoints convert into: `common.use_tf_zoo`), `smoke` (a tiny model for tests).
"""

from configs import common


def get_config(arg=None):
  variant = common.parse_variant(arg, {'resnet101', 'xception71', 'tf_zoo', 'smoke'},
                                 'configs/v3plus_voc.py')
  config = common.get_base_config()
  config.data.name = 'voc'
  config.data.train_split = 'train_aug'  # VOC train + SBD, 10,582 images
  config.data.crop_size = (513, 513)
  config.model.name = 'deeplabv3plus'
  config.model.output_stride = 16
  config.model.bn_momentum = 0.9997
  config.model.aspp.atrous_rates = (6, 12, 18)
  if 'resnet101' in variant:
    config.model.backbone.name = 'resnet101'
    config.model.backbone.multi_grid = (1, 2, 4)
    config.model.backbone.beta_stem = True  # the public code's ResNet-101 'beta',
    config.model.backbone.layout = 'tfslim'  # with its strides on the last unit
    config.optim.weight_decay = 1e-4
  else:
    common.use_xception(config, 'xception71' if 'xception71' in variant else 'xception65')
  config.optim.learning_rate = 0.007
  config.train.batch_size = 16
  config.train.num_steps = 30_000
  config.eval.image_size = (513, 513)
  if 'tf_zoo' in variant:
    common.use_tf_zoo(config)
  if 'smoke' in variant:
    common.make_smoke(config)
  return config
