"""What every segmentation data set's TFDS builder shares: features, class metadata, bad pairs."""

import sys
from typing import Callable, Dict, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from deeplab_jax.errors import UserError

# One example to prepare: its name and a function that reads (image, label) or raises UserError.
Example = Tuple[str, Callable[[], Tuple[np.ndarray, np.ndarray]]]
SHOWN_BAD = 3  # how many skipped files the log names


def bitwise_palette(n: int):
  """The PASCAL VOC colour map: colour i spreads the bits of i over R, G and B."""
  colors = []
  for i in range(n):
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    colors.append((r, g, b))
  return tuple(colors)


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """An image, a single-channel label map and a name per example.

  Subclasses set CLASS_NAMES, COLORS (RGB per class), IGNORE_LABEL and optionally HOMEPAGE;
  their module docstring is the data set's description. A builder whose classes come from
  the data folder stores them in `info.metadata` ('class_names', 'colors', 'ignore_label').
  With `skip_bad_examples`, a pair that fails to read or check is left out and counted in
  the log; without it, preparation stops with the error.
  """
  CLASS_NAMES = ()
  COLORS = ()
  IGNORE_LABEL = 255
  HOMEPAGE = None

  def __init__(self, *, skip_bad_examples: bool = False, **kwargs):
    self.skip_bad_examples = bool(skip_bad_examples)
    super().__init__(**kwargs)
    self._original_state['skip_bad_examples'] = self.skip_bad_examples  # for pickling

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=sys.modules[type(self).__module__].__doc__,
        homepage=self.HOMEPAGE,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.Image(shape=(None, None, 1), use_colormap=False),
            'name': tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict())

  def classes(self):
    """(class names, colours, ignore label) of the prepared copy."""
    meta = self.info.metadata or {}
    names = tuple(meta.get('class_names', self.CLASS_NAMES))
    colors = tuple(tuple(c) for c in meta.get('colors', self.COLORS))
    return names, colors, int(meta.get('ignore_label', self.IGNORE_LABEL))

  def split_generators(self, splits: Dict[str, Sequence[Example]], where: str):
    """TFDS split generators of {split: examples}; `where` names the folder for errors.

    An empty split stops preparation, or with skip_bad_examples is left out with a warning.
    """
    kept = {}
    for split, examples in splits.items():
      if examples:
        kept[split] = self._generate_examples(split, examples)
      elif self.skip_bad_examples:
        logging.warning('%s: split %r has no examples; left out (data.skip_bad_examples).',
                        where, split)
      else:
        raise UserError(f'{where}: split {split!r} has no examples.')
    if not kept:
      raise UserError(f'{where}: no split has any examples.')
    return kept

  def _generate_examples(self, split: str, examples: Sequence[Example]):
    """TFDS examples of a split: bad pairs stop it, or are skipped and counted."""
    skipped, written = [], 0
    for name, read in examples:
      try:
        image, label = read()
      except UserError as e:
        if not self.skip_bad_examples:
          raise
        skipped.append(str(e))
        continue
      written += 1
      yield name, {'image': image, 'label': label[..., None], 'name': name}
    if skipped:
      logging.warning('Skipped %d bad pairs of split %r (data.skip_bad_examples); the first: %s',
                      len(skipped), split, ' | '.join(skipped[:SHOWN_BAD]))
    if not written:
      raise UserError(f'split {split!r}: all {len(skipped)} pairs are bad; the first: '
                      f'{skipped[0]}')
