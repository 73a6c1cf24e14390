"""What every segmentation data set's TFDS builder shares: its features and class metadata."""

import sys

import tensorflow_datasets as tfds


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """An image, a single-channel label map and a name per example.

  Subclasses set CLASS_NAMES, COLORS (RGB per class), IGNORE_LABEL and optionally HOMEPAGE;
  their module docstring is the data set's description.
  """
  CLASS_NAMES = ()
  COLORS = ()
  IGNORE_LABEL = 255
  HOMEPAGE = None

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=sys.modules[type(self).__module__].__doc__,
        homepage=self.HOMEPAGE,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.Image(shape=(None, None, 1), use_colormap=False),
            'name': tfds.features.Text(),
        }))
