"""DeepLab v3+: Xception-65 OS16 on ADE20K SceneParsing (150 classes, 0 ignored).

  python -m deeplab_jax.main --config=configs/v3plus_ade20k.py \
      --config.data.root=/path/to/ADEChallengeData2016 --workdir=/tmp/ade20k

The public DeepLab ADE20K recipe (TF model zoo `xception65_ade20k_train`): crops of 513,
poly learning rate 0.01 for 150k steps, weight decay 4e-5, separable ASPP (6, 12, 18) and
decoder; batch 16 here (the zoo model used a larger one). Variants: `tf_zoo` (the public TF
code's network, which the zoo's `xception65_ade20k_train` converts into with
--drop_first_class: `common.use_tf_zoo`), `smoke`.
"""

from configs import common


def get_config(arg=None):
  variant = common.parse_variant(arg, {'tf_zoo', 'smoke'}, 'configs/v3plus_ade20k.py')
  config = common.get_base_config()
  config.data.name = 'ade20k'
  config.data.crop_size = (513, 513)
  config.model.name = 'deeplabv3plus'
  config.model.output_stride = 16
  config.model.bn_momentum = 0.9997
  config.model.aspp.atrous_rates = (6, 12, 18)
  common.use_xception(config, 'xception65')
  config.optim.learning_rate = 0.01
  config.train.batch_size = 16
  config.train.num_steps = 150_000
  config.train.eval_every_steps = 10_000
  config.eval.image_size = (513, 513)
  if 'tf_zoo' in variant:
    common.use_tf_zoo(config)
  if 'smoke' in variant:
    common.make_smoke(config)
  return config
