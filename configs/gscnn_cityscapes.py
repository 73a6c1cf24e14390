"""Gated-SCNN on Cityscapes fine (19 classes): ResNet-101 at output stride 8, shape stream, ASPP.

  python -m deeplab_jax.main --config=configs/gscnn_cityscapes.py \
      --config.data.root=/path/to/cityscapes --workdir=/tmp/gscnn

The official code's network (nv-tlabs/GSCNN, models/gscnn.py here) and recipe: SGD momentum 0.9,
learning rate 0.01, poly power 1.0, weight decay 1e-4, crops of 720 from images scaled by 0.5 to
2.0, flips, batch 8 (one image on each of 8 GPUs, BatchNorm synchronised), 175 epochs of the
2,975 training images (65,078 steps); the dual-task loss: cross-entropy weighted per image, 20 x
the class-balanced boundary BCE (label boundaries of radius 2), the attention regulariser (the
cross-entropy where the boundary output > 0.8) and the consistency regulariser (Gumbel softmax,
tau 0.5), each weight 1 (losses.gscnn_losses). Scored on whole 1024 x 2048 images, with the
boundary F-score at the paper's 3, 5, 9 and 12 px.

What differs, and why:
- The regular stream is ResNet-101 (our dilated ResNet, OS8), not WideResNet-38, whose taps the
  paper reads. They stand for them as PaddleSeg's and other ResNet ports do:
    m1 (64 ch, full resolution; the shape stream's input)   the stem's convs at stride 2
    m2 (128 ch, 1/2; the decoder's skip)                     the same stride-2 stem features
    m3 (256 ch, 1/4; the first gate's side output)           block1 (256 ch, stride 4)
    m4 (512 ch, 1/8; the second gate's)                      block2 (512 ch, stride 8)
    m7 (4096 ch, 1/8; the third gate's and the ASPP's input) block4 (2048 ch, stride 8)
  ResNet has no features at full resolution: the stride-2 ones are upsampled, as the official
  code upsamples m1 anyway. Paper: 80.8 val mIoU with WideResNet-38 (ImageNet weights).
- The official code's bugs are fixed, as the paper describes the loss: its boundary BCE applies
  the sigmoid twice (here once), and its consistency loss neither smooths nor differentiates
  (its convTri and gradient_central_diff return their input; here a triangle filter of radius 4
  and central differences), and its gradient magnitude has a floor of 1e-3 that makes a flat map
  all boundary after normalising (here 0).
- Canny reads the image's 0..255 intensities (the official code casts the normalised tensor to
  uint8) and gives 0/1, not 0/255; it runs in the graph (models/canny.py, equal to cv2.Canny).
- Label boundaries skip ignore pixels and the crop's border (losses.label_boundaries says why).
- The official code scales each batch by one random factor; here each image gets its own, as in
  every config here; its Gaussian blur and colour jitter are not done.

Variants: `smoke` (a tiny model the tests train for two steps) and `cpu` (with `dev`): the CamVid
side-by-side's Gated-SCNN, configs/v3plus_camvid.py:cpu's data, budget (1600 steps), schedule and
evaluation with this network: the same small ResNet-50 (2-2-3-2 units, x0.375) at output stride 8,
the shape stream x0.375 too (gates of 12, 8 and 8 channels), the ASPP at that recipe's rates
doubled for stride 8 (6, 12, 18), 48-channel heads, and the
dual-task loss in place of that recipe's class weights and hard-pixel mining (Gated-SCNN weights
classes per image itself).
"""

from configs import common
from configs import v3plus_camvid


def get_config(arg=None):
  words = common.parse_variant(arg, {'smoke', 'cpu', 'dev'}, 'configs/gscnn_cityscapes.py')
  if {'cpu', 'smoke'} <= words:
    raise ValueError('configs/gscnn_cityscapes.py: "cpu" and "smoke" do not combine.')
  if 'dev' in words and 'cpu' not in words:
    raise ValueError('configs/gscnn_cityscapes.py: "dev" is a CamVid split: use it with "cpu".')
  if 'cpu' in words:
    return _camvid_cpu(words)
  config = common.get_base_config()
  config.data.name = 'cityscapes'
  config.data.crop_size = (720, 720)
  config.data.min_scale = 0.5
  config.data.max_scale = 2.0
  config.model.backbone.name = 'resnet101'
  _gscnn(config, aspp_rates=(12, 24, 36))
  config.optim.learning_rate = 0.01
  config.optim.power = 1.0
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4
  config.train.batch_size = 8
  config.train.num_steps = 65_078  # 175 epochs of 2,975 images at batch 8
  config.train.eval_every_steps = 5_000
  config.eval.image_size = (1024, 2048)
  config.eval.batch_size = 8
  config.eval.boundary_tolerances = (3, 5, 9, 12)
  if 'smoke' in words:
    common.make_smoke(config)
    config.model.backbone.multi_grid = (1,)
    config.model.backbone.units = (1, 1, 1, 1)
    config.eval.boundary_tolerances = (1, 2)
  return config


def _gscnn(config, aspp_rates):
  """Gated-SCNN's network on config's ResNet at output stride 8 (multi-grid off, as a plain
  dilated ResNet), its ASPP at `aspp_rates`."""
  config.model.name = 'gscnn'
  config.model.output_stride = 8
  config.model.backbone.multi_grid = (1,) * len(config.model.backbone.multi_grid)
  config.model.aspp.atrous_rates = aspp_rates


def _camvid_cpu(words):
  """configs/v3plus_camvid.py:cpu with Gated-SCNN's network and loss (the module docstring)."""
  config = v3plus_camvid.get_config('cpu,dev' if 'dev' in words else 'cpu')
  _gscnn(config, aspp_rates=(6, 12, 18))  # the recipe's (3, 6, 9) at stride 8
  config.train.class_weights = ()
  config.train.top_k_percent_pixels = 1.0
  config.train.hard_example_mining_step = 0
  return config
