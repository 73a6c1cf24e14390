"""Layers in plain numpy, on one HWC image, for forward passes written independently of flax
(tests/test_fcn.py, tests/test_fc_densenet.py, tests/test_unet.py)."""

import numpy as np


def conv(x, kernel, bias=None, pad=None):
  """Cross-correlation of HWC `x` with a [k, k, in, out] kernel, zero-padded by `pad` on every
  side (None: k // 2, which keeps the size for odd k), plus `bias`."""
  k = kernel.shape[0]
  pad = k // 2 if pad is None else pad
  x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  h, w = x.shape[0] - k + 1, x.shape[1] - k + 1
  out = np.zeros((h, w, kernel.shape[-1]))
  for a in range(k):
    for b in range(k):
      out += x[a:a + h, b:b + w] @ kernel[a, b]
  return out if bias is None else out + bias


def max_pool2(x, ceil=False):
  """2x2 max pool of stride 2; an odd last row or column is dropped, or with `ceil` (Caffe's
  rounding) pooled on its own."""
  if ceil:
    x = np.pad(x, ((0, x.shape[0] % 2), (0, x.shape[1] % 2), (0, 0)), constant_values=-np.inf)
  h, w = x.shape[0] // 2, x.shape[1] // 2
  return x[:2 * h, :2 * w].reshape(h, 2, w, 2, -1).max(axis=(1, 3))


def conv_transpose(x, kernel, bias=None, stride=2):
  """flax's nn.ConvTranspose with padding 'VALID' and transpose_kernel=False: the input dilated
  by `stride` and correlated with the kernel, which scatters the kernel flipped: input pixel
  (i, j) adds its maps times tap (k-1-a, k-1-b) at output (s i + a, s j + b); (H - 1) s + k
  rows out (Caffe's Deconvolution, for a symmetric kernel)."""
  k = kernel.shape[0]
  h, w = x.shape[:2]
  out = np.zeros(((h - 1) * stride + k, (w - 1) * stride + k, kernel.shape[-1]))
  for a in range(k):
    for b in range(k):
      out[a:a + (h - 1) * stride + 1:stride, b:b + (w - 1) * stride + 1:stride] += (
          x @ kernel[k - 1 - a, k - 1 - b])
  return out if bias is None else out + bias
