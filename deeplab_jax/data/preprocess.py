"""Joint image/label preprocessing ops, registered by name and composed from a spec string.

A spec is `op(args)|op(args)|...`, for example
`random_scale(0.5, 2.0)|pad_to(513, 513, (124, 116, 104))|random_crop(513, 513)|flip_lr|
normalize`.
An example is a dict with `image` (float32 [H, W, 3], 0..255 until normalised) and `label`
(int32 [H, W, 1]). Random ops are stateless: each takes its own seed split from the
example's seed, and the image and the label always share one draw. Labels are resized by
nearest neighbour and padded with the ignore label.
"""

import ast
from typing import Callable, Dict, List, Tuple

import tensorflow as tf

from deeplab_jax.errors import UserError

Example = Dict[str, tf.Tensor]
Op = Callable[[Example, tf.Tensor], Example]
OPS: Dict[str, Callable[..., Op]] = {}


def register(name: str):
  def wrap(factory):
    OPS[name] = factory
    return factory
  return wrap


def _resize(example: Example, size) -> Example:
  size = tf.cast(size, tf.int32)
  out = dict(example)
  out['image'] = tf.image.resize(example['image'], size, method='bilinear')
  out['label'] = tf.image.resize(example['label'], size, method='nearest')
  return out


def _scaled_size(image, factor):
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  return tf.maximum(tf.cast(tf.round(hw * factor), tf.int32), 1)


@register('scale')
def scale(factor: float, **_) -> Op:
  """Resizes image and label by a fixed factor."""
  return lambda ex, seed: _resize(ex, _scaled_size(ex['image'], factor))


@register('random_scale')
def random_scale(min_scale: float, max_scale: float, **_) -> Op:
  """Resizes image and label by one factor drawn uniformly from [min_scale, max_scale]."""
  def op(ex, seed):
    factor = tf.random.stateless_uniform([], seed, min_scale, max_scale)
    return _resize(ex, _scaled_size(ex['image'], factor))
  return op


@register('resize')
def resize(height: int, width: int, **_) -> Op:
  """Resizes image (bilinear) and label (nearest) to height x width."""
  return lambda ex, seed: _resize(ex, [height, width])


@register('color_jitter')
def color_jitter(brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0, **_) -> Op:
  """Random photometric change of the image only, values kept in 0..255.

  brightness: largest delta added, in 0..255 units; contrast, saturation: the factor is
  drawn from [1 - x, 1 + x]; hue: largest shift as a fraction of the colour wheel (<= 0.5).
  Zero turns a change off. The changes apply in this order, each from its own seed.
  """
  for field, value, top in (('brightness', brightness, 255.0), ('contrast', contrast, 1.0),
                            ('saturation', saturation, None), ('hue', hue, 0.5)):
    if not value >= 0 or (top is not None and value > top):
      raise UserError(f'color_jitter {field}={value} is not in 0..{top if top else "inf"}.')

  def op(ex, seed):
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = ex['image'] / 255.0
    clip = lambda x: tf.clip_by_value(x, 0.0, 1.0)
    if brightness:
      image = clip(tf.image.stateless_random_brightness(image, brightness / 255.0, seeds[0]))
    if contrast:
      image = clip(tf.image.stateless_random_contrast(image, 1 - contrast, 1 + contrast,
                                                      seeds[1]))
    if saturation:
      image = clip(tf.image.stateless_random_saturation(image, max(1 - saturation, 0.0),
                                                        1 + saturation, seeds[2]))
    if hue:
      image = clip(tf.image.stateless_random_hue(image, hue, seeds[3]))
    return {**ex, 'image': image * 255.0}
  return op


@register('normalize')
def normalize(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), **_) -> Op:
  """(image - mean) / std per RGB channel."""
  def op(ex, seed):
    del seed
    return {**ex, 'image': (ex['image'] - tf.constant(mean)) / tf.constant(std)}
  return op


@register('pad_to')
def pad_to(height: int, width: int, fill=0.0, *, ignore_label: int, **_) -> Op:
  """Pads bottom/right to at least height x width: the label with the ignore label, the image
  with `fill` (a value, or one per channel: pad with the mean colour before `normalize`)."""
  fill = tuple(fill) if isinstance(fill, (tuple, list)) else (fill,)

  def op(ex, seed):
    del seed
    shape = tf.shape(ex['image'])
    pads = [[0, tf.maximum(height - shape[0], 0)], [0, tf.maximum(width - shape[1], 0)]]

    def pad(image, label):
      if len(fill) == 1:
        image = tf.pad(image, pads + [[0, 0]], constant_values=fill[0])
      else:
        image = tf.stack([tf.pad(image[..., i], pads, constant_values=v)
                          for i, v in enumerate(fill)], axis=-1)
      return image, tf.pad(label, pads + [[0, 0]], constant_values=ignore_label)

    short = tf.logical_or(shape[0] < height, shape[1] < width)  # else no copy
    image, label = tf.cond(short, lambda: pad(ex['image'], ex['label']),
                           lambda: (ex['image'], ex['label']))
    return {**ex, 'image': image, 'label': label}
  return op


@register('random_crop')
def random_crop(height: int, width: int, **_) -> Op:
  """One random height x width window of image and label (pad first if they may be smaller)."""
  def op(ex, seed):
    shape = tf.shape(ex['image'])
    seeds = tf.random.experimental.stateless_split(seed, 2)
    top = tf.random.stateless_uniform([], seeds[0], 0, shape[0] - height + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[1], 0, shape[1] - width + 1, dtype=tf.int32)
    crop = lambda x: x[top:top + height, left:left + width]
    image, label = crop(ex['image']), crop(ex['label'])
    image.set_shape([height, width, 3])
    label.set_shape([height, width, 1])
    return {**ex, 'image': image, 'label': label}
  return op


def _mirror_indices(n, before: int, after: int):
  """Indices of rows -before .. n + after - 1 of a length-n axis mirrored past its ends without
  repeating the edge (numpy's 'reflect'), and again where the margin is wider than the axis."""
  period = tf.maximum(2 * (n - 1), 1)
  i = tf.math.floormod(tf.range(-before, n + after), period)
  return tf.where(i >= n, period - i, i)


@register('context_crop')
def context_crop(height: int, width: int, margin: int, fill=0.0, *, ignore_label: int,
                 **_) -> Op:
  """random_crop's height x width window of the label, with the image `margin` px wider on each
  side: real image where the image has it, mirrored past its border (U-Net's overlap-tile,
  models/unet.py). A short image is padded to the window as pad_to does, after its mirror."""
  if margin < 0:
    raise UserError(f'context_crop margin={margin} must be >= 0.')
  pad = pad_to(height + 2 * margin, width + 2 * margin, fill, ignore_label=ignore_label)
  crop = random_crop(height + 2 * margin, width + 2 * margin)

  def op(ex, seed):
    shape = tf.shape(ex['image'])
    rows = _mirror_indices(shape[0], margin, margin)
    cols = _mirror_indices(shape[1], margin, margin)
    image = tf.gather(tf.gather(ex['image'], rows, axis=0), cols, axis=1)
    edge = [[margin, margin], [margin, margin], [0, 0]]
    label = tf.pad(ex['label'], edge, constant_values=ignore_label)  # the mirror is unlabelled
    ex = crop(pad({**ex, 'image': image, 'label': label}, seed), seed)
    label = ex['label'][margin:margin + height, margin:margin + width]
    label.set_shape([height, width, 1])
    return {**ex, 'label': label}
  return op


@register('flip_lr')
def flip_lr(probability: float = 0.5, **_) -> Op:
  """Flips image and label left-right together with the given probability."""
  def op(ex, seed):
    flip = tf.random.stateless_uniform([], seed) < probability
    maybe = lambda x: tf.cond(flip, lambda: tf.reverse(x, [1]), lambda: x)
    return {**ex, 'image': maybe(ex['image']), 'label': maybe(ex['label'])}
  return op


def parse(spec: str) -> List[Tuple[str, tuple]]:
  """'a(1, 2)|b' -> [('a', (1, 2)), ('b', ())], with an error naming an unknown op."""
  ops = []
  for part in filter(None, (p.strip() for p in spec.split('|'))):
    name, _, rest = part.partition('(')
    name = name.strip()
    if name not in OPS:
      raise UserError(f'preprocessing op {name!r} in {spec!r} is not one of {sorted(OPS)}.')
    args = ()
    if rest:
      try:
        args = ast.literal_eval('(' + rest.rstrip()[:-1] + ',)') if rest.strip() != ')' else ()
      except (SyntaxError, ValueError) as e:
        raise UserError(f'preprocessing op {part!r}: cannot read its arguments ({e}).') from None
    ops.append((name, args))
  return ops


def build(spec: str, *, ignore_label: int) -> Op:
  """One function (example, seed) -> example applying the ops of `spec` in order."""
  ops = [OPS[name](*args, ignore_label=ignore_label) for name, args in parse(spec)]

  def apply(example, seed):
    seeds = tf.random.experimental.stateless_split(seed, max(len(ops), 1))
    for i, op in enumerate(ops):
      example = op(example, seeds[i])
    return example
  return apply
