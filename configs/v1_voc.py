"""DeepLab v1 (DeepLab-LargeFOV): VGG-16, OS8, fc6 3x3 at rate 12, on PASCAL VOC 2012.

  python -m deeplab_jax.main --config=configs/v1_voc.py \
      --config.data.root=/path/to/voc --workdir=/tmp/v1_voc

The v1 paper's recipe (section 4.1): crops of 321 (306 in the first version), batch 20,
learning rate 0.001 divided by 10 every 2000 of 6000 steps, momentum 0.9, weight decay
5e-4, dropout 0.5 after fc6 and fc7; evaluation refines the output with the dense CRF
(config.eval.crf). Not reproduced: the paper's 10x learning rate on the classifier. Variant
`:smoke` is a tiny model for tests.
"""

from configs import common


def get_config(arg=None):
  variant = common.parse_variant(arg, {'smoke'}, 'configs/v1_voc.py')
  config = common.get_base_config()
  config.data.name = 'voc'
  config.data.train_split = 'train_aug'  # VOC train + SBD, 10,582 images
  config.data.crop_size = (321, 321)
  config.data.min_scale = config.data.max_scale = 1.0  # v1 trained without scale jitter
  config.model.name = 'deeplabv1'
  config.model.context = 'none'
  config.model.output_stride = 8
  config.model.backbone.name = 'vgg16'
  config.model.backbone.fc6_rate = 12
  config.model.backbone.multi_grid = ()
  config.optim.schedule = 'step'
  config.optim.learning_rate = 0.001
  config.optim.decay_every_steps = 2000
  config.optim.decay_factor = 0.1
  config.optim.weight_decay = 5e-4
  config.train.batch_size = 20
  config.train.num_steps = 6000
  config.train.eval_every_steps = 2000
  config.eval.image_size = (513, 513)
  # The dense CRF at evaluation, with the public release's VOC setting (configs/common.py):
  # w1=4, s_alpha=67, s_beta=3, w2=3, s_gamma=3, 10 mean-field iterations.
  config.eval.crf.enabled = True
  if 'smoke' in variant:
    common.make_smoke(config)
  return config
