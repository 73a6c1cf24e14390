"""Canny edges in the graph (Gated-SCNN's image gradient), as OpenCV's `cv2.Canny` computes them.

Gated-SCNN fuses its shape stream's boundary map with `cv2.Canny(image, 10, 100)`, computed on
the host from the input batch. Here the same algorithm is plain jnp, so it runs on any backend
inside the jitted step and `jax.export` carries it: 3x3 Sobel derivatives (borders replicated) in
integers, per pixel the channel of largest L1 magnitude |dx| + |dy| (the first on ties),
non-maximum suppression along the gradient quantised to 0, 45, 90 or 135 degrees with OpenCV's
fixed-point tan(22.5) test and its strict / non-strict comparisons, then hysteresis: pixels above
`high` seed edges that grow through 8-connected pixels above `low` (a `while_loop` to a fixed
point). tests/test_gscnn.py compares it with cv2.Canny pixel for pixel.
"""

import jax
import jax.numpy as jnp

_SHIFT = 15
_TG22 = 13573  # round(tan(22.5 degrees) * 2 ** 15), OpenCV's TG22


def _shift(x, dr, dc, fill):
  """x[:, r + dr, c + dc] over [B, H, W], `fill` outside."""
  h, w = x.shape[1:3]
  p = jnp.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=fill)
  return p[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]


def sobel(images: jax.Array):
  """(dx, dy) of int [B, H, W, C] images: OpenCV's 3x3 Sobel with replicated borders (int32)."""
  x = images.astype(jnp.int32)
  h, w = x.shape[1:3]
  p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='edge')
  at = lambda dr, dc: p[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
  dx = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
  dy = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
  return dx, dy


def canny(images: jax.Array, low: float = 10, high: float = 100) -> jax.Array:
  """Canny edges (bool [B, H, W]) of [B, H, W, C] images with integer values 0..255.

  `low` and `high` are OpenCV's thresholds on the L1 gradient magnitude (floored to integers;
  swapped when low > high, as OpenCV does).
  """
  low, high = sorted((int(low // 1), int(high // 1)))
  dx, dy = sobel(images)
  mag = jnp.abs(dx) + jnp.abs(dy)
  best = jnp.argmax(mag, axis=-1)[..., None]  # the first channel of the largest magnitude
  pick = lambda t: jnp.take_along_axis(t, best, axis=-1)[..., 0]
  mag, dx, dy = pick(mag), pick(dx), pick(dy)

  # Non-maximum suppression; magnitudes outside the image are 0.
  m = lambda dr, dc: _shift(mag, dr, dc, 0)
  x, y = jnp.abs(dx), jnp.left_shift(jnp.abs(dy), _SHIFT)
  tg22x = x * _TG22
  tg67x = tg22x + jnp.left_shift(x, _SHIFT + 1)
  s = jnp.where((dx ^ dy) < 0, -1, 1)
  # The diagonal neighbours: (r - 1, c - s) and (r + 1, c + s), for s = +-1.
  up_diag = jnp.where(s > 0, m(-1, -1), m(-1, 1))
  down_diag = jnp.where(s > 0, m(1, 1), m(1, -1))
  horizontal = (mag > m(0, -1)) & (mag >= m(0, 1))
  vertical = (mag > m(-1, 0)) & (mag >= m(1, 0))
  diagonal = (mag > up_diag) & (mag > down_diag)
  peak = jnp.where(y < tg22x, horizontal, jnp.where(y > tg67x, vertical, diagonal))
  weak = peak & (mag > low)
  strong = weak & (mag > high)

  def grow(state):
    edges, _ = state
    near = jnp.zeros_like(edges)
    for dr in (-1, 0, 1):
      for dc in (-1, 0, 1):
        near = near | _shift(edges, dr, dc, False)
    grown = edges | (weak & near)
    return grown, jnp.any(grown != edges)

  edges, _ = jax.lax.while_loop(lambda state: state[1], grow, (strong, jnp.array(True)))
  return edges
