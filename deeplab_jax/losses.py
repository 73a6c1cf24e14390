"""Pixel-wise losses."""

import jax
import jax.numpy as jnp
import optax


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int):
  """Mean softmax cross-entropy over the pixels whose label is not `ignore_label`.

  Args:
    logits: float [B, H, W, K], at the label's size.
    labels: int [B, H, W].
  Returns:
    (loss, number of valid pixels). The mean is over the whole (global) batch.
  """
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
  count = jnp.sum(valid)
  return jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(count, 1), count
