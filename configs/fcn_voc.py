"""FCN-8s on VGG-16 (Long, Shelhamer and Darrell) on PASCAL VOC, as the reference code trains it.

  python -m deeplab_jax.main --config=configs/fcn_voc.py:fcn32s \
      --config.data.root=/path/to/voc --workdir=/tmp/fcn32s --config.init_from=/path/to/vgg16
  python -m deeplab_jax.main --config=configs/fcn_voc.py:fcn16s ... --config.init_from=/tmp/fcn32s
  python -m deeplab_jax.main --config=configs/fcn_voc.py ... --config.init_from=/tmp/fcn16s

The reference recipe (voc-fcn*s/solver.prototxt): whole images at batch 1, no crop, scaling or
flip, SGD with momentum 0.99, weight decay 5e-4, a fixed learning rate for 100k steps, staged:
FCN-32s from ImageNet VGG-16 at 1e-10, FCN-16s from FCN-32s at 1e-12, FCN-8s from FCN-16s at
1e-14; `atonce` trains FCN-8s from VGG-16 in one stage (pool4 x 0.01, pool3 x 1e-4) at 1e-10 for
300k steps. Translated: those rates are for a loss summed over the image's pixels; here the loss
is their mean, so each rate is multiplied by the pixels of a typical VOC image (500 x 375 =
187,500) for the same step, and the weight decay, which Caffe adds to the summed gradient
unscaled, is divided by the same number (2.7e-9). Images are padded to 500 x 500 (the largest
VOC side) with the ignore label, where the reference code feeds each at its own size.
Not reproduced: the biases' doubled learning rate and their exemption from decay (the decay
here skips biases anyway), the SBD training set (8,498 images; here `train_aug`, VOC train +
SBD, 10,582) and the seg11valid split (736 images; here VOC 2012 val, 1,449). The pretrained
VGG-16 is torchvision's (`deeplab_jax.convert --source=torchvision`), so inputs are normalised
as torchvision's, not the Caffe model's BGR mean subtraction.

Variants: `fcn16s`, `fcn32s`, `atonce`, `learned` (the upsampling kernels train, as in the
CVPR experiments), `same` (SAME padding: inputs padded to a multiple of 32), `smoke`.
"""

from configs import common

PIXELS = 500 * 375  # a typical VOC image: the summed loss's rates become the mean loss's
RATES = {'fcn32s': 1e-10, 'fcn16s': 1e-12, 'fcn8s': 1e-14}


def get_config(arg=None):
  words = common.parse_variant(arg, {'fcn16s', 'fcn32s', 'atonce', 'learned', 'same', 'smoke'},
                               'configs/fcn_voc.py')
  variant = 'fcn32s' if 'fcn32s' in words else 'fcn16s' if 'fcn16s' in words else 'fcn8s'
  if {'fcn16s', 'fcn32s'} <= words or ('atonce' in words and variant != 'fcn8s'):
    raise ValueError(f'configs/fcn_voc.py: {sorted(words)} do not combine (atonce is FCN-8s).')
  config = common.get_base_config()
  config.data.name = 'voc'
  config.data.train_split = 'train_aug'
  config.data.crop_size = (500, 500)
  config.data.min_scale = config.data.max_scale = 1.0
  config.data.flip = False
  config.eval.image_size = (500, 500)

  config.model.name = 'fcn'
  config.model.output_stride = 32
  config.model.fcn.variant = variant
  config.model.fcn.at_once = 'atonce' in words
  config.model.fcn.learn_upsampling = 'learned' in words
  config.model.fcn.padding = 'same' if 'same' in words else 'reference'

  config.optim.schedule = 'step'
  config.optim.decay_factor = 1.0      # a fixed rate
  config.optim.learning_rate = (1e-10 if 'atonce' in words else RATES[variant]) * PIXELS
  config.optim.momentum = 0.99
  config.optim.weight_decay = 5e-4 / PIXELS
  config.train.batch_size = 1
  config.train.num_steps = 300_000 if 'atonce' in words else 100_000
  config.train.eval_every_steps = 4000
  config.train.checkpoint_every_steps = 4000
  if 'smoke' in words:
    common.make_smoke(config)
    # Behind zero-initialised score layers two steps at the real rates would leave the trunk's
    # weights unchanged in float32.
    config.optim.learning_rate = 0.1
  return config
