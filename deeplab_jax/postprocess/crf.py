"""The fully connected CRF of DeepLab v1/v2 (Krähenbühl and Koltun, 2011), in JAX.

Energy: unary `-log_probs` plus a Potts pairwise term over all pixel pairs with two Gaussian
kernels, the appearance kernel `w1 exp(-|p_i - p_j|^2 / 2 s_alpha^2 - |I_i - I_j|^2 / 2 s_beta^2)`
and the smoothness kernel `w2 exp(-|p_i - p_j|^2 / 2 s_gamma^2)` (p in pixels, I in 0..255).

Mean-field inference, as in the reference implementation (densecrf 2.2, pydensecrf): each
kernel K is used symmetrically normalised, `D^-1/2 K D^-1/2` with `D = diag(K 1)` (the sums
include i = j), and each iteration sets `Q = softmax(log_probs + sum_m w_m Kn_m Q)`.

Filtering is linear in the number of pixels: the appearance kernel with a permutohedral lattice
(lattice.py) and the smoothness kernel, which is separable, exactly with two 1-D Gaussian
convolutions (truncated at 4 standard deviations).

Mean field runs as a sequence of small jitted stages (lattice splat, each blur axis, slice; each
smoothness pass; the update) called from Python, so that each stage reads materialised inputs:
compiled as one program, XLA:CPU fused them into gather-bound loops that recomputed their
producers (see `_mean_field`). The smoothness filter is dispatched from a helper thread, so
that it runs beside the lattice's serial scatter.
"""

import concurrent.futures
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax.postprocess import lattice as lattice_lib


def _gaussian_1d(sigma: float, size: int):
  """Taps of a Gaussian truncated at 4 standard deviations, as constants (numpy)."""
  radius = max(1, min(int(math.ceil(4.0 * sigma)), size - 1))
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  return np.exp(-0.5 * (x / sigma) ** 2).astype(np.float32), radius


def _blur_axis(values, taps, radius, axis, step=1):
  """Zero-padded convolution of values with symmetric taps (2 * radius + 1) along one axis,
  whose elements are `step` apart (step > 1: an axis folded into the next one)."""
  pad = [(0, 0)] * values.ndim
  pad[axis] = (radius * step, radius * step)
  padded = jnp.pad(values, pad)
  size = values.shape[axis]
  shifted = lambda k: jax.lax.slice_in_dim(padded, (radius + k) * step,
                                           (radius + k) * step + size, axis=axis)
  out = taps[radius] * values
  for k in range(1, radius + 1):
    out = out + taps[radius + k] * (shifted(k) + shifted(-k))
  return out


@functools.partial(lattice_lib.jit, static_argnums=2)
def _spatial_rows(values, scale, s_gamma: float):
  """The blur along H of scale * values [H, W, C], with W and C folded into one axis."""
  h, w, c = values.shape
  taps, radius = _gaussian_1d(s_gamma, h)
  return _blur_axis((scale * values).reshape(h, w * c), taps, radius, 0).reshape(h, w, c)


@functools.partial(lattice_lib.jit, static_argnums=1)
def _spatial_columns(values, s_gamma: float):
  h, w, c = values.shape
  taps, radius = _gaussian_1d(s_gamma, w)
  return _blur_axis(values.reshape(h, w * c), taps, radius, 1, step=c).reshape(h, w, c)


def spatial_filter(values, s_gamma: float, scale=1.0):
  """Exact sum_j exp(-|p_i - p_j|^2 / 2 s_gamma^2) scale_j values_j over an [H, W, C] grid, as
  two jitted 1-D passes (one jit of both fused them into a slower loop)."""
  return _spatial_columns(_spatial_rows(values, scale, float(s_gamma)), float(s_gamma))


def _features(image, valid, s_alpha, s_beta):
  """[H*W, 5] bilateral features (x, y) / s_alpha, RGB / s_beta. Pixels outside `valid` are
  moved far from every valid one, so that they share no lattice vertex with them."""
  h, w, _ = image.shape
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing='ij')
  colour = image.astype(jnp.float32) / s_beta
  colour = jnp.where(valid[..., None], colour, colour - 4.0 * 255.0 / s_beta - 100.0)
  return jnp.concatenate([xx[..., None] / s_alpha, yy[..., None] / s_alpha, colour],
                         -1).reshape(h * w, 5)


@lattice_lib.jit
def _norms(bilateral, spatial, valid):
  """D^-1/2 of each kernel ([H, W, 1], zero outside `valid`) from its filtered mask."""
  mask = valid[..., None].astype(jnp.float32)
  rsqrt = lambda x: mask * jax.lax.rsqrt(x + 1e-20)
  return rsqrt(bilateral.reshape(mask.shape)), rsqrt(spatial)


@lattice_lib.jit
def _update(log_probs, bound, bilateral, spatial, bilateral_norm, spatial_norm, w1, w2):
  """One mean-field update, Q = softmax(log_probs + w1 Kn_1 Q + w2 Kn_2 Q), shifted by `bound`
  rather than by the max over the classes (a reduction over the short last axis, which XLA:CPU
  runs slowly). Also returns the smallest softmax denominator: below 1e-30 (some
  pixel's logits all far under the bound) the shift lost precision."""
  logits = (log_probs + w1 * bilateral_norm * bilateral.reshape(log_probs.shape) +
            w2 * spatial_norm * spatial)
  e = jnp.exp(logits - bound)
  total = jnp.sum(e, -1, keepdims=True)
  return e / total, jnp.min(total)


@lattice_lib.jit
def _update_exact(log_probs, bilateral, spatial, bilateral_norm, spatial_norm, w1, w2):
  """The update normalised by the max over classes. Also returns the bound for `_update`:
  [H, W, 1], an upper bound of every class's logit in every later update. The filters are
  positive and Q sums to 1 over the classes, so no class's filtered Q exceeds the sum over
  classes of this update's filtered Q (the kernel's row sum)."""
  bilateral = bilateral.reshape(log_probs.shape)
  logits = log_probs + w1 * bilateral_norm * bilateral + w2 * spatial_norm * spatial
  bound = (jnp.max(log_probs, -1, keepdims=True) +
           jnp.maximum(w1, 0.0) * bilateral_norm * jnp.sum(bilateral, -1, keepdims=True) +
           jnp.maximum(w2, 0.0) * spatial_norm * jnp.sum(spatial, -1, keepdims=True))
  return jax.nn.softmax(logits, axis=-1), bound


_softmax = lattice_lib.jit(lambda log_probs: jax.nn.softmax(log_probs, axis=-1))
_HELPER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='dense_crf')


def _mean_field(lat, log_probs, valid, w1, w2, s_gamma, iterations, exact=False):
  """Mean field as a sequence of jitted stages. Compiled as one program, XLA fuses each
  iteration's slice, smoothness blur and update into one loop whose gathers keep it from
  vectorising, about half of the iteration's time on the CPU (benchmarks/RESULTS.md, "Dense
  CRF"; `benchmarks/crf.py --stages` times the stages). After the first, updates are shifted
  by a bound rather than by the max over classes (see _update); exact=True shifts every one by
  the max, as a run whose shifted softmax underflowed is redone."""
  log_probs = log_probs.astype(jnp.float32)
  mask = valid[..., None].astype(jnp.float32)
  bilateral_norm, spatial_norm = _norms(lattice_lib.filter_values(lat, mask),
                                        spatial_filter(mask, s_gamma), valid)
  q, smallest = _softmax(log_probs), []
  for i in range(iterations):
    # The smoothness filter runs from a helper thread while this one runs the lattice, whose
    # scatter (the splat) keeps one CPU core busy on its own.
    spatial = _HELPER.submit(spatial_filter, q, s_gamma, spatial_norm)
    bilateral = lattice_lib.filter_values(lat, q, scale=bilateral_norm)
    spatial = spatial.result()
    if exact or i == 0:
      q, bound = _update_exact(log_probs, bilateral, spatial, bilateral_norm, spatial_norm, w1,
                               w2)
    else:
      q, total = _update(log_probs, bound, bilateral, spatial, bilateral_norm, spatial_norm, w1,
                         w2)
      smallest.append(total)
  if smallest and not float(jnp.min(jnp.stack(smallest))) >= 1e-30:  # NaN too
    return _mean_field(lat, log_probs, valid, w1, w2, s_gamma, iterations, exact=True)
  return q


_features_one = lattice_lib.jit(_features)


def dense_crf(image, log_probs, *, w1: float, s_alpha: float, s_beta: float, w2: float,
              s_gamma: float, iterations: int, valid=None):
  """Mean-field inference in the dense CRF; returns probabilities shaped like log_probs.

  Args:
    image: uint8 [H, W, 3] or [B, H, W, 3] RGB.
    log_probs: float [H, W, K] or [B, H, W, K] log-probabilities (unary = -log_probs); logits
      work too, since only their differences matter.
    w1, s_alpha, s_beta: appearance kernel weight, position std (pixels), colour std (0..255).
    w2, s_gamma: smoothness kernel weight and position std (pixels).
    iterations: mean-field iterations (0 returns softmax(log_probs)).
    valid: optional bool [H, W] or [B, H, W]; pixels outside it (padding) neither send nor
      receive messages, so a padded image gives what the unpadded one would.

  Runs as jitted stages with one read of the lattice size on the host in between (see
  lattice.py), so call it from Python rather than inside another jit.
  """
  image = jnp.asarray(image)
  log_probs = jnp.asarray(log_probs)
  if image.dtype != jnp.uint8:
    raise ValueError(f'dense_crf: image must be uint8 RGB, got {image.dtype}.')
  if image.ndim not in (3, 4) or image.shape[-1] != 3:
    raise ValueError(f'dense_crf: image must be [H, W, 3] or [B, H, W, 3], got {image.shape}.')
  if log_probs.shape[:-1] != image.shape[:-1]:
    raise ValueError(f'dense_crf: log_probs {log_probs.shape} must be image {image.shape} with '
                     'the last axis holding the classes.')
  for name, value in (('s_alpha', s_alpha), ('s_beta', s_beta), ('s_gamma', s_gamma)):
    if not value > 0:
      raise ValueError(f'dense_crf: {name}={value} must be > 0.')
  if int(iterations) != iterations or iterations < 0:
    raise ValueError(f'dense_crf: iterations={iterations} must be an integer >= 0.')
  valid = jnp.ones(image.shape[:-1], bool) if valid is None else jnp.asarray(valid, bool)
  if valid.shape != image.shape[:-1]:
    raise ValueError(f'dense_crf: valid {valid.shape} must be image {image.shape} less RGB.')
  if image.ndim == 4:
    # One image at a time: under vmap XLA's CPU gathers ran about 3x slower than this loop.
    return jnp.stack([_dense_crf_one(image[b], log_probs[b], valid[b], w1, s_alpha, s_beta, w2,
                                     s_gamma, iterations) for b in range(image.shape[0])])
  return _dense_crf_one(image, log_probs, valid, w1, s_alpha, s_beta, w2, s_gamma, iterations)


def _dense_crf_one(image, log_probs, valid, w1, s_alpha, s_beta, w2, s_gamma, iterations):
  features = _features_one(image, valid, jnp.float32(s_alpha), jnp.float32(s_beta))
  lat = lattice_lib.build(features)
  return _mean_field(lat, log_probs, valid, jnp.float32(w1), jnp.float32(w2), float(s_gamma),
                     int(iterations))
