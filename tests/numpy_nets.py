"""Layers in plain numpy, on one HWC image, for forward passes written independently of flax
(tests/test_fc_densenet.py, tests/test_unet.py)."""

import numpy as np


def conv(x, kernel, bias=None, same=True):
  """Cross-correlation of HWC `x` with a [k, k, in, out] kernel (odd k), zero-padded to keep the
  size (`same`) or unpadded, plus `bias`."""
  k = kernel.shape[0]
  if same:
    x = np.pad(x, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  h, w = x.shape[0] - k + 1, x.shape[1] - k + 1
  out = np.zeros((h, w, kernel.shape[-1]))
  for a in range(k):
    for b in range(k):
      out += x[a:a + h, b:b + w] @ kernel[a, b]
  return out if bias is None else out + bias


def max_pool2(x):
  """2x2 max pool of stride 2 (an odd last row or column dropped)."""
  h, w = x.shape[0] // 2, x.shape[1] // 2
  return x[:2 * h, :2 * w].reshape(h, 2, w, 2, -1).max(axis=(1, 3))


def conv_transpose2(x, kernel, bias):
  """flax's nn.ConvTranspose of stride 2, padding 'VALID', transpose_kernel=False: the input
  dilated by 2 and correlated with the kernel, which scatters the kernel flipped: input pixel
  (i, j) adds its maps times tap (k-1-a, k-1-b) at output (2i + a, 2j + b); 2H + max(k-2, 0)
  rows out."""
  k = kernel.shape[0]
  h, w = x.shape[:2]
  out = np.zeros((2 * h + max(k - 2, 0), 2 * w + max(k - 2, 0), kernel.shape[-1]))
  for i in range(h):
    for j in range(w):
      for a in range(k):
        for b in range(k):
          out[2 * i + a, 2 * j + b] += x[i, j] @ kernel[k - 1 - a, k - 1 - b]
  return out + bias
