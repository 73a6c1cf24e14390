"""Pixel-wise losses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

_TINY = 1e-12  # the denominator when no pixel counts (the loss is then 0)


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int,
                        top_k_fraction=1.0, class_weights=None):
  """Mean softmax cross-entropy over the pixels whose label is not `ignore_label`.

  Args:
    logits: float [B, H, W, K], at the label's size.
    labels: int [B, H, W].
    top_k_fraction: below 1, online hard example mining as in DeepLab's `top_k_percent_pixels`:
      only this fraction of the batch's pixels, those with the largest losses, count, and the
      mean is over those of them with a nonzero loss. May be a traced scalar.
    class_weights: None, or a weight per class [K]: each pixel's loss is scaled by its label's
      weight and the mean is the weighted one (sum of weighted losses / sum of the weights),
      as PyTorch's CrossEntropyLoss(weight=...). With top_k_fraction < 1 the hardest pixels
      are those with the largest weighted losses.
  Returns:
    (loss, number of valid pixels). The mean is over the whole (global) batch.
  """
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  # Dense one-hot labels, not optax's integer-label form: that one gathers the label's logit
  # (take_along_axis, with an index grid as large as the batch) and its gradient scatters;
  # the one-hot product fuses into the softmax on every backend.
  losses = optax.softmax_cross_entropy(
      logits.astype(jnp.float32), jax.nn.one_hot(safe, logits.shape[-1], dtype=jnp.float32))
  # A label outside the classes (which the data readers reject) has an all-zero one-hot row;
  # the loss is then NaN, so that training stops on a non-finite loss instead of ignoring it.
  stray = jnp.any((safe < 0) | (safe >= logits.shape[-1]))
  count = jnp.sum(valid)
  if class_weights is None:
    weights = valid.astype(jnp.float32)
  else:
    weights = jnp.where(valid, jnp.asarray(class_weights, jnp.float32)[safe], 0.0)
  losses = jnp.where(valid, losses * weights, 0.0)
  if isinstance(top_k_fraction, (int, float)) and top_k_fraction >= 1:
    return _nan_if(stray, jnp.sum(losses) / jnp.maximum(jnp.sum(weights), _TINY)), count
  flat, weights = losses.reshape(-1), weights.reshape(-1)
  k = jnp.clip(jnp.ceil(top_k_fraction * flat.size).astype(jnp.int32), 1, flat.size)
  threshold = kth_largest(jax.lax.stop_gradient(flat), k)
  chosen = (flat >= threshold) & (flat > 0)
  return _nan_if(stray, jnp.sum(jnp.where(chosen, flat, 0.0)) /
                 jnp.maximum(jnp.sum(jnp.where(chosen, weights, 0.0)), _TINY)), count


def _nan_if(condition, x):
  return jnp.where(condition, jnp.nan, x)


def kth_largest(values: jax.Array, k) -> jax.Array:
  """The k-th largest of the non-negative `values` (1-D), exactly; negatives count as 0.

  A radix select, not a sort: non-negative floats order as their bit patterns do as integers,
  so the answer's 31 bits are found from the top, one pass of counting over `values` each (is
  the count of values at or above the prefix with this bit set still >= k?). On XLA:CPU a sort
  of a batch's pixel losses runs on one thread and was the largest op in a profile of the
  CamVid CPU recipe's step, where the 31 counts are too small to show (benchmarks/RESULTS.md,
  "Optimisation record", item 5); under a sharded batch they are 31 scalar all-reduces where
  a sort gathers every pixel. A NaN counts as the largest value or as 0, by its sign bit (a
  sort puts every NaN last).
  """
  keys = jax.lax.bitcast_convert_type(jnp.maximum(values, 0.0).astype(jnp.float32), jnp.int32)

  def set_bit(bit, prefix):
    candidate = prefix | jnp.left_shift(jnp.int32(1), 30 - bit)
    return jnp.where(jnp.sum(keys >= candidate) >= k, candidate, prefix)

  prefix = jax.lax.fori_loop(0, 31, set_bit, jnp.int32(0))
  return jax.lax.bitcast_convert_type(prefix, jnp.float32)


def hard_pixel_fraction(step, top_k_percent_pixels: float, hard_example_mining_step: int):
  """The fraction of pixels the loss keeps at `step`: all of them at step 0, falling linearly
  to top_k_percent_pixels at hard_example_mining_step (at once when that is 0), as in DeepLab."""
  if top_k_percent_pixels >= 1:
    return 1.0
  if hard_example_mining_step <= 0:
    return top_k_percent_pixels
  ratio = jnp.minimum(1.0, step / hard_example_mining_step)
  return ratio * top_k_percent_pixels + (1.0 - ratio)


def median_frequency_weights(class_pixels, image_pixels, power: float = 1.0) -> np.ndarray:
  """Median frequency balancing (Eigen & Fergus 2015; SegNet's CamVid weights).

  freq(c) = class_pixels[c] / image_pixels[c], the pixels of class c over all pixels of the
  images where c is present; weight(c) = (median(freq) / freq(c)) ** power (power 0.5: the
  square roots, a milder balance). A class that never occurs gets weight 0.
  """
  if not power > 0:
    raise ValueError(f'power={power} must be > 0.')
  class_pixels = np.asarray(class_pixels, np.float64)
  image_pixels = np.asarray(image_pixels, np.float64)
  present = class_pixels > 0
  freq = np.where(present, class_pixels / np.maximum(image_pixels, 1), 0.0)
  if not present.any():
    return np.zeros_like(freq)
  median = np.median(freq[present])
  return np.where(present, (median / np.where(present, freq, 1.0)) ** power, 0.0)


# --------------------------------------------------------------------------- Gated-SCNN


def label_boundaries(labels: jax.Array, ignore_label: int, radius: int = 2) -> jax.Array:
  """Boundary pixels (bool [B, H, W]) of a label map: labelled pixels with a pixel of another
  label (not `ignore_label`) within Euclidean distance `radius`.

  Gated-SCNN's edge targets (its edge_utils, radius 2), with two differences: ignore pixels
  make no boundary (they include the padding of crops), and the image's border is none (the
  official code pads each class mask with zeros, which marks a band along every crop's edge).
  """
  h, w = labels.shape[1:3]
  p = jnp.pad(labels, ((0, 0), (radius, radius), (radius, radius)), constant_values=ignore_label)
  near_other = jnp.zeros(labels.shape, bool)
  for dr in range(-radius, radius + 1):
    for dc in range(-radius, radius + 1):
      if dr * dr + dc * dc > radius * radius or (dr, dc) == (0, 0):
        continue
      q = p[:, radius + dr:radius + dr + h, radius + dc:radius + dc + w]
      near_other = near_other | ((q != labels) & (q != ignore_label))
  return near_other & (labels != ignore_label)


def image_weighted_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int):
  """Gated-SCNN's segmentation loss (its ImageBasedCrossEntropyLoss2d): each image's pixels
  weighted by w_c = 1 + (1 - f_c) for the classes present in it (f_c: the class's fraction of
  its labelled pixels; 1 for absent ones), a weighted mean per image, then the mean over the
  images with labelled pixels (the official code sums over its one image per GPU, and the
  GPUs average)."""
  k = logits.shape[-1]
  valid = labels != ignore_label
  onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), k, dtype=jnp.float32) * valid[..., None]
  counts = jnp.sum(onehot, axis=(1, 2))                                     # [B, K]
  freq = counts / jnp.maximum(jnp.sum(counts, axis=-1, keepdims=True), 1.0)
  class_w = 1.0 + (counts > 0) * (1.0 - freq)
  pixel_w = jnp.einsum('bhwk,bk->bhw', onehot, class_w)
  nll = -jnp.sum(onehot * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)
  per_image = jnp.sum(pixel_w * nll, axis=(1, 2)) / jnp.maximum(jnp.sum(pixel_w, axis=(1, 2)),
                                                               _TINY)
  has = jnp.any(valid, axis=(1, 2))
  return jnp.sum(jnp.where(has, per_image, 0.0)) / jnp.maximum(jnp.sum(has), 1)


def balanced_boundary_bce(edge_logits: jax.Array, boundary: jax.Array, valid: jax.Array):
  """Class-balanced binary cross-entropy of the boundary logits [B, H, W] (one sigmoid: the
  official code passes its already sigmoided output to a BCE with logits): boundary pixels
  weighted by the fraction of non-boundary ones and the others by the boundary fraction,
  counted over the batch's `valid` pixels, averaged over them."""
  t = boundary.astype(jnp.float32)
  v = valid.astype(jnp.float32)
  pos, neg = jnp.sum(t * v), jnp.sum((1 - t) * v)
  total = jnp.maximum(pos + neg, 1.0)
  weight = v * jnp.where(boundary, neg / total, pos / total)
  bce = optax.sigmoid_binary_cross_entropy(edge_logits.astype(jnp.float32), t)
  return jnp.sum(weight * bce) / total


def _triangle_smooth(x: jax.Array, r: int) -> jax.Array:
  """Piotr Dollar's convTri over [B, H, W, K]: the separable triangle filter 1..r+1..1 /
  (r + 1)^2, borders mirrored with the edge pixel repeated, as his toolbox pads."""
  f = jnp.asarray(list(range(1, r + 2)) + list(range(r, 0, -1)), jnp.float32) / (r + 1) ** 2
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (r, r)
    p = jnp.pad(x, pad, mode='symmetric')
    n = x.shape[axis]
    x = sum(f[i] * jax.lax.slice_in_dim(p, i, i + n, axis=axis) for i in range(2 * r + 1))
  return x


def gradient_magnitude(x: jax.Array, smooth: int = 4) -> jax.Array:
  """Gated-SCNN's compute_grad_mag over [B, H, W, K] as the paper describes it: triangle
  smoothing, central differences (one-sided at the border), the magnitude divided by each
  image's maximum (the official code's maximum is over its one image per GPU). The official
  code does neither of the first two (its convTri and gradient_central_diff return their
  input, so it compares sqrt(2 E^2 + 1e-6)). The magnitude is sqrt(gx^2 + gy^2 + 1e-6) - 1e-3:
  differentiable at 0 and exactly 0 where the map is flat, so a crop of one class has no
  boundary to match and the masks of dual_task_consistency keep only real boundary pixels."""
  e = _triangle_smooth(x.astype(jnp.float32), smooth)
  gy, gx = jnp.gradient(e, axis=(1, 2))
  mag = jnp.sqrt(gx * gx + gy * gy + 1e-6) - 1e-3
  return mag / jnp.maximum(jnp.max(mag, axis=(1, 2, 3), keepdims=True), 1e-6)


def dual_task_consistency(logits: jax.Array, labels: jax.Array, ignore_label: int,
                          uniform: jax.Array, tau: float = 0.5, eps: float = 1e-10):
  """The boundary-consistency ("->") regulariser: |grad mag(Gumbel-softmax(logits, tau)) -
  grad mag(one-hot labels)|, half averaged where the first is >= 1e-8 and half where the second
  is, over labelled pixels and classes. `uniform`: samples in [0, 1) shaped like `logits`
  (the Gumbel noise is -log(eps - log(uniform + eps)), the official code's). Ignore pixels
  have zero logits and class 0, as the official code sets them, and count in neither mean."""
  k = logits.shape[-1]
  valid = (labels != ignore_label)[..., None]
  z = jnp.where(valid, logits.astype(jnp.float32), 0.0)
  gumbel = -jnp.log(eps - jnp.log(uniform + eps))
  g = gradient_magnitude(jax.nn.softmax((z + gumbel) / tau, axis=-1))
  g_hat = gradient_magnitude(jax.nn.one_hot(jnp.where(valid[..., 0], labels, 0), k))
  diff = jnp.abs(g - g_hat)
  terms = []
  for m in (g, g_hat):
    mask = jax.lax.stop_gradient((m >= 1e-8) & valid).astype(jnp.float32)
    terms.append(jnp.sum(diff * mask) / (jnp.sum(mask) + eps))
  return 0.5 * terms[0] + 0.5 * terms[1]


def gscnn_losses(logits: jax.Array, edge_logits: jax.Array, labels: jax.Array, ignore_label: int,
                 rng: jax.Array, loss_config) -> dict:
  """Gated-SCNN's dual-task loss, each term already weighted (model.gscnn.loss's weights):
  'seg' (image-weighted cross-entropy), 'edge' (balanced boundary BCE against
  label_boundaries), 'att' (the cross-entropy on pixels where sigmoid(edge) > att_threshold)
  and 'dual' (dual_task_consistency). The total is their sum."""
  c = loss_config
  edge_logits = edge_logits[..., 0]
  valid = labels != ignore_label
  boundary = label_boundaries(labels, ignore_label, c.boundary_radius)
  sure = jax.lax.stop_gradient(jax.nn.sigmoid(edge_logits)) > c.att_threshold
  uniform = jax.random.uniform(rng, logits.shape, jnp.float32)
  return {
      'seg': c.seg * image_weighted_cross_entropy(logits, labels, ignore_label),
      'edge': c.edge * balanced_boundary_bce(edge_logits, boundary, valid),
      'att': c.att * image_weighted_cross_entropy(
          logits, jnp.where(sure, labels, ignore_label), ignore_label),
      'dual': c.dual * dual_task_consistency(logits, labels, ignore_label, uniform,
                                             c.gumbel_tau),
  }
