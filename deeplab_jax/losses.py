"""Pixel-wise losses."""

import jax
import jax.numpy as jnp
import optax


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int,
                        top_k_fraction=1.0):
  """Mean softmax cross-entropy over the pixels whose label is not `ignore_label`.

  Args:
    logits: float [B, H, W, K], at the label's size.
    labels: int [B, H, W].
    top_k_fraction: below 1, online hard example mining as in DeepLab's `top_k_percent_pixels`:
      only this fraction of the batch's pixels, those with the largest losses, count, and the
      mean is over those of them with a nonzero loss. May be a traced scalar.
  Returns:
    (loss, number of valid pixels). The mean is over the whole (global) batch.
  """
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
  losses = jnp.where(valid, losses, 0.0)
  count = jnp.sum(valid)
  if isinstance(top_k_fraction, (int, float)) and top_k_fraction >= 1:
    return jnp.sum(losses) / jnp.maximum(count, 1), count
  flat = losses.reshape(-1)
  k = jnp.clip(jnp.ceil(top_k_fraction * flat.size).astype(jnp.int32), 1, flat.size)
  threshold = jnp.sort(jax.lax.stop_gradient(flat))[flat.size - k]   # the k-th largest
  chosen = (flat >= threshold) & (flat > 0)
  return jnp.sum(jnp.where(chosen, flat, 0.0)) / jnp.maximum(jnp.sum(chosen), 1), count


def hard_pixel_fraction(step, top_k_percent_pixels: float, hard_example_mining_step: int):
  """The fraction of pixels the loss keeps at `step`: all of them at step 0, falling linearly
  to top_k_percent_pixels at hard_example_mining_step (at once when that is 0), as in DeepLab."""
  if top_k_percent_pixels >= 1:
    return 1.0
  if hard_example_mining_step <= 0:
    return top_k_percent_pixels
  ratio = jnp.minimum(1.0, step / hard_example_mining_step)
  return ratio * top_k_percent_pixels + (1.0 - ratio)
