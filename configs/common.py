"""Defaults shared by every experiment config; each experiment overrides what it changes."""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  """Returns a DeepLabv3+ ResNet-101 OS16 config with the v3+ paper's recipe."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = 'synthetic'       # a key of deeplab_jax.data.DATASETS
  config.data.root = ''                # folder holding the data set; '' = download (where possible)
  config.data.cache_dir = '~/.cache/deeplab_jax'  # prepared copies, keyed by the root's contents
  config.data.train_split = 'train'
  config.data.crop_size = (513, 513)   # (height, width) of training crops
  config.data.image_scale = 1.0        # resize every image by this first (0.5 = half resolution)
  config.data.min_scale = 0.5          # random scale range
  config.data.max_scale = 2.0
  config.data.flip = True              # random left-right flip
  config.data.mean = (123.675, 116.28, 103.53)  # RGB, 0..255
  config.data.std = (58.395, 57.12, 57.375)

  config.model = ml_collections.ConfigDict()
  config.model.name = 'deeplabv3plus'  # or 'deeplabv3'
  config.model.output_stride = 16
  config.model.width_multiplier = 1.0
  config.model.dtype = 'float32'       # compute dtype; parameters stay float32
  config.model.bn_momentum = 0.99
  config.model.bn_epsilon = 1e-5
  config.model.backbone = ml_collections.ConfigDict()
  config.model.backbone.name = 'resnet101'
  config.model.backbone.beta_stem = False
  config.model.backbone.multi_grid = (1, 2, 4)
  config.model.backbone.units = ()     # override units per block, () = the named depth
  config.model.aspp = ml_collections.ConfigDict()
  config.model.aspp.atrous_rates = (6, 12, 18)
  config.model.aspp.features = 256
  config.model.aspp.image_pooling = True
  config.model.aspp.dropout_rate = 0.1
  config.model.decoder = ml_collections.ConfigDict()
  config.model.decoder.low_level_endpoint = 'block1'
  config.model.decoder.low_level_features = 48
  config.model.decoder.features = 256

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 0.01
  config.optim.end_learning_rate = 0.0
  config.optim.power = 0.9             # poly schedule: lr0 * (1 - step / total) ** power
  config.optim.warmup_steps = 0
  config.optim.momentum = 0.9
  config.optim.nesterov = False
  config.optim.weight_decay = 1e-4
  config.optim.weight_decay_pattern = r'.*/kernel$'  # regex on 'a/b/kernel' parameter paths
  config.optim.grad_clip_norm = 0.0    # 0 = no clipping

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 16         # global, over all hosts and devices
  config.train.num_steps = 30_000
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 1000
  config.train.keep_checkpoints = 3
  config.train.eval_every_steps = 5000

  config.eval = ml_collections.ConfigDict()
  config.eval.split = 'val'
  config.eval.batch_size = 8           # global
  config.eval.image_size = (513, 513)  # every image is padded to this (label with ignore)
  config.eval.input_scale = 1.0        # image resized by this for the model; scored at full size
  config.eval.num_images_to_write = 4  # input | ground truth | prediction panels per evaluation

  # Device mesh as data: axis names and sizes, -1 = the rest of the devices. The batch is
  # split over `data`; `spatial` splits the image height.
  config.mesh = (('data', -1), ('spatial', 1))
  return config
