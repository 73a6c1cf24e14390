"""DeepLab v3+ with MobileNetV2 (the public zoo's mobile backbone) on PASCAL VOC.

  python -m deeplab_jax.main --config=configs/v3plus_mobilenet_voc.py \
      --config.data.root=/path/to/voc --workdir=/tmp/mobilenet_voc

As the TF model zoo's `mobilenetv2_coco_voc_trainaug`: MobileNetV2 (depth multiplier 1.0)
at OS16 with the mobile ASPP, a 1x1 branch and image pooling but no atrous branches; here
with the v3+ decoder on `layer4_depthwise` (stride 4, the public code's decoder endpoint
for MobileNetV2), separable. Crops of 513, batch 16, poly learning rate 0.007 for 30k
steps, weight decay 4e-5. Variants (comma-separated): `dm05` (depth multiplier 0.5),
`smoke` (a tiny model for tests).
"""

from configs import common


def get_config(arg=None):
  variant = common.parse_variant(arg, {'dm05', 'smoke'}, 'configs/v3plus_mobilenet_voc.py')
  config = common.get_base_config()
  config.data.name = 'voc'
  config.data.train_split = 'train_aug'  # VOC train + SBD, 10,582 images
  config.data.crop_size = (513, 513)
  config.model.name = 'deeplabv3plus'
  config.model.output_stride = 16
  config.model.bn_momentum = 0.9997
  config.model.backbone.name = 'mobilenetv2'
  config.model.backbone.multi_grid = ()
  config.model.backbone.depth_multiplier = 0.5 if 'dm05' in variant else 1.0
  config.model.aspp.atrous_rates = ()
  config.model.decoder.separable = True
  config.optim.learning_rate = 0.007
  config.optim.weight_decay = 4e-5
  config.optim.weight_decay_pattern = common.NO_DEPTHWISE_DECAY
  config.train.batch_size = 16
  config.train.num_steps = 30_000
  config.eval.image_size = (513, 513)
  if 'smoke' in variant:
    common.make_smoke(config)
  return config
