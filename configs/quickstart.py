"""A small DeepLabv3+ on the embedded synthetic scenes, sized for 2 CPU cores (under 10 minutes).

  python -m deeplab_jax.main --config=configs/quickstart.py --workdir=/tmp/quickstart

`get_config('smoke')` shrinks it further to a few steps for tests.
"""

from configs import common


def get_config(arg=None):
  config = common.get_base_config()
  config.data.name = 'synthetic'
  config.data.crop_size = (80, 80)     # images are 96 x 96
  config.data.min_scale = 0.75
  config.data.max_scale = 1.25

  config.model.backbone.name = 'resnet50'
  config.model.backbone.units = (1, 1, 2, 1)
  config.model.backbone.multi_grid = (1,)
  config.model.width_multiplier = 0.25
  config.model.output_stride = 16
  config.model.aspp.atrous_rates = (2, 4, 6)
  config.model.bn_momentum = 0.9

  config.optim.learning_rate = 0.08
  config.optim.warmup_steps = 50
  config.optim.weight_decay = 1e-4

  config.train.batch_size = 16
  config.train.num_steps = 2500
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 250
  config.train.eval_every_steps = 500

  config.eval.batch_size = 40
  config.eval.image_size = (96, 96)
  if arg == 'smoke':
    config.model.width_multiplier = 0.125
    config.data.crop_size = (48, 48)
    config.train.batch_size = 8
    config.train.num_steps = 4
    config.train.log_every_steps = 2
    config.train.checkpoint_every_steps = 2
    config.train.eval_every_steps = 4
    config.optim.warmup_steps = 0
  elif arg:
    raise ValueError(f'configs/quickstart.py: unknown variant {arg!r}; use "smoke" or none.')
  return config
