"""DeepLab v2: ResNet-101 OS8, ASPP-L (rates 6/12/18/24), multi-scale inputs, on PASCAL VOC.

  python -m deeplab_jax.main --config=configs/v2_voc.py \
      --config.data.root=/path/to/voc --workdir=/tmp/v2_voc

The v2 paper's recipe (section 4.1): crops of 321, batch 10, poly learning rate 2.5e-4
(power 0.9) for 20k steps, momentum 0.9, weight decay 5e-4; inputs at scales 1, 0.75 and
0.5 through shared weights, logits fused by max, with a loss on each scale and on the
fused output; random scaling 0.5 to 1.5 and flips; the dense CRF at evaluation
(config.eval.crf). Not reproduced: the 10x learning rate of the classifier and the frozen
ImageNet BatchNorm statistics (ImageNet weights load with config.init_from, from
deeplab_jax.convert, but BatchNorm still trains). Variant `:smoke` is a tiny model for tests.
"""

from configs import common


def get_config(arg=None):
  variant = common.parse_variant(arg, {'smoke'}, 'configs/v2_voc.py')
  config = common.get_base_config()
  config.data.name = 'voc'
  config.data.train_split = 'train_aug'  # VOC train + SBD, 10,582 images
  config.data.crop_size = (321, 321)
  config.data.max_scale = 1.5          # v2 table 4: random scale 0.5 to 1.5
  config.model.name = 'deeplabv2'
  config.model.context = 'aspp_l'
  config.model.output_stride = 8
  config.model.input_scales = (1.0, 0.75, 0.5)
  config.model.backbone.name = 'resnet101'
  config.model.backbone.multi_grid = ()
  config.model.aspp.atrous_rates = (6, 12, 18, 24)
  config.optim.learning_rate = 2.5e-4
  config.optim.weight_decay = 5e-4
  config.train.batch_size = 10
  config.train.num_steps = 20_000
  config.eval.image_size = (513, 513)
  # The dense CRF at evaluation, with the public release's VOC setting (configs/common.py):
  # w1=4, s_alpha=67, s_beta=3, w2=3, s_gamma=3, 10 mean-field iterations.
  config.eval.crf.enabled = True
  if 'smoke' in variant:
    common.make_smoke(config)
  return config
