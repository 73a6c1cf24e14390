"""The per-image counts file of an evaluation (eval.per_image_counts): each image's per-class
ground-truth, predicted and intersecting pixels (metrics.per_image_counts), in the split's order.

Needs numpy and etils only, not JAX, so that launch/summarize.py reads it anywhere for its
bootstrap intervals over images and seeds.
"""

import hashlib
import io
import uuid
from typing import Dict, Tuple

from etils import epath
import numpy as np

DIRECTORY = 'per_image'


def write(workdir: str, result: Dict, index: np.ndarray, per_image: np.ndarray,
          class_names) -> str:
  """Writes an evaluation's per-image counts [N, 3, K] of the split's images `index` [N] to
  WORKDIR/per_image/ and returns the file's path relative to WORKDIR.

  Compact: the sparse nonzero counts as uint32 in a compressed .npz (about 10 kB a split for
  CamVid; ADE20K's 2,000 images x 150 classes are mostly zeros). Written through a temporary
  file renamed over it, as evals.jsonl is."""
  order = np.argsort(index, kind='stable')
  index, per_image = index[order], per_image[order]
  if len(np.unique(index)) != len(index):
    twice = sorted(set(index[1:][np.diff(index) == 0].tolist()))
    raise ValueError(f'evaluation saw images {twice} twice.')
  digest = hashlib.sha1(result['protocol'].encode()).hexdigest()[:10]
  name = f'{DIRECTORY}/{result["split"]}_step{result["step"]}_{digest}.npz'
  where = np.nonzero(per_image)
  buffer = io.BytesIO()
  np.savez_compressed(
      buffer, index=index.astype(np.int32), shape=np.asarray(per_image.shape, np.int64),
      nonzero=np.stack(where).astype(np.int32), values=per_image[where].astype(np.uint32),
      class_names=np.asarray(list(class_names)), protocol=np.asarray(result['protocol']))
  path = epath.Path(workdir) / name
  path.parent.mkdir(parents=True, exist_ok=True)
  temp = path.parent / f'.{path.name}.{uuid.uuid4().hex}.tmp'
  temp.write_bytes(buffer.getvalue())
  temp.replace(path)
  return name


def read(workdir: str, row: Dict) -> Tuple[np.ndarray, np.ndarray]:
  """(index [N], counts [N, 3, K] int64) of an evals.jsonl row written with per-image counts."""
  with (epath.Path(workdir) / row['per_image_counts']).open('rb') as f:
    data = np.load(io.BytesIO(f.read()))
    counts = np.zeros(tuple(data['shape']), np.int64)
    counts[tuple(data['nonzero'])] = data['values']
    return data['index'].astype(np.int64), counts
