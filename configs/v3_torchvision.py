"""torchvision's DeepLabv3 (`deeplabv3_resnet50` / `deeplabv3_resnet101`), built exactly.

  python -m deeplab_jax.summary --config=configs/v3_torchvision.py:resnet50 --json
  python -m deeplab_jax.main --config=configs/v3_torchvision.py:resnet101,aux \
      --config.data.root=/path/to/voc --workdir=/tmp/torchvision_v3

ResNet in torchvision's layout at OS8 (layer3 and layer4 dilated, the first unit of each at
the previous rate), no multi-grid; `DeepLabHead`: ASPP (12, 24, 36) + image pooling with
dropout 0.5 after the projection, an extra 3x3 conv of 256 + BN + ReLU, a 1x1 classifier;
`aux`: the FCN auxiliary head on layer3 (block3) with loss weight 0.5. 21 classes (VOC).
Parameters: 39,638,869 (resnet50) and 58,630,997 (resnet101); with `aux` 42,004,074 and
60,996,202, as torchvision's models. Recipe of torchvision's reference scripts: crop 480,
batch 32, poly learning rate 0.02, weight decay 1e-4.
`fcn`: torchvision's FCN (`fcn_resnet50` / `fcn_resnet101`) on the same backbone: its head
(3x3 conv 512 + BN + ReLU, then the 1x1 classifier) is the context module with one rate-1 layer
of 512 (no dropout); 32,957,013 / 51,949,141 parameters, with `aux` 35,322,218 / 54,314,346 as
torchvision's.
Variants (comma-separated): `resnet50` or `resnet101` (default), `aux`, `fcn`, `smoke`.
"""

from configs import common


def get_config(arg=None):
  variant = common.parse_variant(arg, {'resnet50', 'resnet101', 'aux', 'fcn', 'smoke'},
                                 'configs/v3_torchvision.py')
  if {'resnet50', 'resnet101'} <= variant:
    raise ValueError('configs/v3_torchvision.py: choose one of resnet50, resnet101.')
  config = common.get_base_config()
  config.data.name = 'voc'
  config.data.train_split = 'train_aug'  # VOC train + SBD, 10,582 images
  config.data.crop_size = (480, 480)
  config.model.name = 'deeplabv3'
  config.model.output_stride = 8
  config.model.backbone.name = 'resnet50' if 'resnet50' in variant else 'resnet101'
  config.model.backbone.layout = 'torchvision'
  config.model.backbone.multi_grid = ()
  config.model.aspp.atrous_rates = (12, 24, 36)
  config.model.aspp.dropout_rate = 0.5
  config.model.aspp.output_conv = True
  if 'fcn' in variant:
    config.model.context = 'context_module'
    config.model.context_module.atrous_rates = (1,)
    config.model.context_module.features = 512
  if 'aux' in variant:
    config.model.aux_head.endpoint = 'block3'
    config.model.aux_head.features = 256
    config.model.aux_head.dropout_rate = 0.1
    config.model.aux_head.loss_weight = 0.5
  config.model.bn_momentum = 0.9  # PyTorch's BatchNorm momentum 0.1
  config.optim.learning_rate = 0.02
  config.optim.weight_decay = 1e-4
  config.train.batch_size = 32
  config.train.num_steps = 30_000
  config.eval.image_size = (513, 513)
  if 'smoke' in variant:
    common.make_smoke(config)
  return config
