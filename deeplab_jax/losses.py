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
