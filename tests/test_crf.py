"""The dense CRF: the XLA-built lattice against a hash-table one written plainly, mean field
against exact O(N^2) computations, padding, batching, errors, and evaluation with the CRF."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.postprocess import crf
from deeplab_jax.postprocess import dense_crf
from deeplab_jax.postprocess import lattice

PARAMS = dict(w1=4.0, s_alpha=67.0, s_beta=3.0, w2=3.0, s_gamma=3.0, iterations=10)


def plain_lattice_filter(features, values):
  """Adams et al.'s permutohedral filter with a dict for the hash table, point by point."""
  n, d = features.shape
  d1 = d + 1
  scale = math.sqrt(2 / 3) * d1 / np.sqrt(np.arange(1, d + 1) * np.arange(2, d + 2))
  table, splats = {}, []
  for f in features.astype(np.float64):
    cf = f * scale
    elevated = np.zeros(d1)
    elevated[0] = cf.sum()
    for j in range(1, d1):
      elevated[j] = cf[j:].sum() - j * cf[j - 1]
    rem0 = np.round(elevated / d1) * d1
    diff = elevated - rem0
    rank = np.zeros(d1, int)
    for i in range(d1):
      for j in range(i + 1, d1):
        if diff[i] < diff[j]:
          rank[i] += 1
        else:
          rank[j] += 1
    rank += int(round((rem0 / d1).sum()))
    for i in range(d1):
      if rank[i] < 0:
        rank[i] += d1
        rem0[i] += d1
      elif rank[i] > d:
        rank[i] -= d1
        rem0[i] -= d1
    bary = np.zeros(d + 2)
    for i in range(d1):
      bary[d - rank[i]] += (elevated[i] - rem0[i]) / d1
      bary[d - rank[i] + 1] -= (elevated[i] - rem0[i]) / d1
    bary[0] += 1 + bary[d1]
    vertices = []
    for r in range(d1):
      key = tuple(int(rem0[i]) + (r if rank[i] <= d - r else r - d1) for i in range(d1))
      vertices.append((table.setdefault(key, len(table)), bary[r]))
    splats.append(vertices)
  keys = list(table)
  grid = np.zeros((len(keys), values.shape[1]))
  for vertices, v in zip(splats, values):
    for index, weight in vertices:
      grid[index] += weight * v
  for j in range(d1):
    new = grid.copy()
    for index, key in enumerate(keys):
      for sign in (1, -1):
        neighbour = tuple(k - sign if i != j else k + sign * d for i, k in enumerate(key))
        if neighbour in table:
          new[index] += 0.5 * grid[table[neighbour]]
    grid = new
  alpha = 1 / (1 + 2.0 ** -d)
  return np.stack([alpha * sum(w * grid[i] for i, w in vertices) for vertices in splats])


@pytest.mark.parametrize('d', [2, 5])
def test_lattice_equals_a_plain_hash_table_one(d):
  rng = np.random.default_rng(d)
  features = rng.normal(0, 1.5, (60, d)).astype(np.float32)
  features[10:20] = features[0]  # repeated points share vertices
  values = rng.uniform(size=(60, 3)).astype(np.float32)
  lat = lattice.build(jnp.asarray(features))
  want = plain_lattice_filter(features, values)
  for chunk in (0, 7):  # all points in one splat (here), or 8 chunks and a remainder of 4
    got = np.asarray(lattice.filter_values(lat, jnp.asarray(values), chunk=chunk))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert int(lat.num_vertices) == len({tuple(k) for k in np.asarray(
      lattice._points(jnp.asarray(features))[2][:int(lat.num_vertices)])})


def test_hash_dedup_finds_each_keys_first_row():
  """_dedup against numpy: 3000 rows of 300 distinct keys in a 4096-slot table (collisions
  force several rounds); inactive rows are left out."""
  rng = np.random.default_rng(0)
  distinct = rng.integers(-50, 50, (300, 5))
  keys = distinct[rng.integers(0, 300, 3000)].astype(np.int32)
  active = rng.uniform(size=3000) < 0.9
  owner = np.asarray(lattice._dedup(jnp.asarray(keys), jnp.asarray(active)))
  first = {}
  for i in np.flatnonzero(active):
    first.setdefault(tuple(keys[i]), i)
  want = np.array([first[tuple(k)] if a else 3000 for k, a in zip(keys, active)])
  np.testing.assert_array_equal(owner, want)


def test_lattice_approximates_the_gaussian():
  """Normalised filtering of a smooth signal is within a few percent of the exact Gaussian
  (the lattice's own approximation, not 1e-3: measured 1.2 % mean, 4.6 % worst here)."""
  rng = np.random.default_rng(0)
  features = rng.uniform(0, 4, (400, 3)).astype(np.float32)
  values = np.sin(features.sum(-1, keepdims=True)).astype(np.float32) + 2
  k = np.exp(-0.5 * ((features[:, None] - features[None]) ** 2).sum(-1))
  exact = (k @ values) / k.sum(1, keepdims=True)
  lat = lattice.build(jnp.asarray(features))
  ones = lattice.filter_values(lat, jnp.ones((400, 1)))
  got = np.asarray(lattice.filter_values(lat, jnp.asarray(values)) / ones)
  error = np.abs(got - exact) / np.abs(exact)
  assert error.mean() < 0.02 and error.max() < 0.08, (error.mean(), error.max())


def tiny_inputs(seed, h=12, w=14, k=4):
  rng = np.random.default_rng(seed)
  blocks = rng.integers(0, 256, (3, 3, 3))
  image = np.kron(blocks, np.ones((4, 5, 1)))[:h, :w] + rng.normal(0, 2, (h, w, 3))
  image = np.clip(image, 0, 255).astype(np.uint8)
  log_probs = np.asarray(jax.nn.log_softmax(rng.normal(0, 1.5, (h, w, k)), -1), np.float32)
  return image, log_probs


def exact_mean_field(log_probs, kernels, iterations):
  """O(N^2) mean field: kernels are [N, N] (weight, matrix) pairs, normalised symmetrically."""
  h, w, k = log_probs.shape
  lp = log_probs.reshape(-1, k).astype(np.float64)
  softmax = lambda x: np.exp(x - x.max(1, keepdims=True)) / np.exp(
      x - x.max(1, keepdims=True)).sum(1, keepdims=True)
  normed = [(wt, m / np.sqrt(np.outer(m.sum(1), m.sum(1)))) for wt, m in kernels]
  q = softmax(lp)
  for _ in range(iterations):
    q = softmax(lp + sum(wt * m @ q for wt, m in normed))
  return q.reshape(h, w, k)


def positions(h, w):
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  return np.stack([xx, yy], -1).reshape(-1, 2).astype(np.float64)


def gaussian(features, std):
  return np.exp(-((features[:, None] - features[None]) ** 2).sum(-1) / (2 * std ** 2))


def test_smoothness_kernel_matches_exact_mean_field():
  """With the appearance kernel off, every step is exact: to 1e-5 of the O(N^2) computation."""
  image, log_probs = tiny_inputs(0)
  params = dict(PARAMS, w1=0.0)
  got = np.asarray(dense_crf(image, log_probs, **params))
  p = positions(*image.shape[:2])
  want = exact_mean_field(log_probs, [(3.0, gaussian(p, 3.0))], 10)
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize('seed', [0, 1])
def test_full_crf_matches_exact_mean_field_with_the_lattice_kernel(seed):
  """Both kernels, mean field computed densely in float64 with the appearance kernel that the
  lattice realises (its N x N matrix, filtered column by column): equal to 1e-4. With the true
  Gaussian in its place they differ, since the lattice only approximates that Gaussian."""
  image, log_probs = tiny_inputs(seed)
  h, w, _ = image.shape
  got = np.asarray(dense_crf(image, log_probs, **PARAMS))
  features = crf._features(jnp.asarray(image), jnp.ones((h, w), bool), jnp.float32(67.0),
                           jnp.float32(3.0))
  lat = lattice.build(features)
  lattice_kernel = np.asarray(lattice.filter_values(lat, jnp.eye(h * w)), np.float64)
  want = exact_mean_field(log_probs, [(4.0, lattice_kernel),
                                      (3.0, gaussian(positions(h, w), 3.0))], 10)
  np.testing.assert_allclose(got, want, atol=1e-4)
  # The lattice kernel is the Gaussian's approximation: same support, same shape on average.
  exact = gaussian(np.concatenate([positions(h, w) / 67.0,
                                   image.reshape(-1, 3).astype(np.float64) / 3.0], -1), 1.0)
  big = exact > 0.5
  ratio = lattice_kernel[big] / exact[big]
  assert 0.2 < np.median(ratio) < 1.0, np.median(ratio)


@pytest.mark.parametrize('weight', [4.0, 300.0])
def test_update_shifted_by_the_bound_equals_the_softmax(weight, monkeypatch):
  """After the first, updates subtract an upper bound of the logits rather than their max.
  With the usual weights that is the softmax to float precision; with huge ones the shifted
  exponentials underflow, and mean field is redone with the max."""
  image, log_probs = tiny_inputs(5)
  h, w, _ = image.shape
  valid = jnp.ones((h, w), bool)
  lat = lattice.build(crf._features(jnp.asarray(image), valid, jnp.float32(67.0),
                                    jnp.float32(3.0)))
  args = (lat, jnp.asarray(log_probs), valid, jnp.float32(weight), jnp.float32(weight), 3.0, 5)
  exact = np.asarray(crf._mean_field(*args, exact=True))
  calls = []
  update_exact = crf._update_exact
  monkeypatch.setattr(crf, '_update_exact', lambda *a: calls.append(1) or update_exact(*a))
  got = np.asarray(crf._mean_field(*args))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, exact, atol=1e-5)
  # The first update is always exact; a redone run makes five more.
  assert len(calls) == (6 if weight > 100 else 1), len(calls)


def test_padding_masked_by_valid_gives_the_unpadded_result():
  image, log_probs = tiny_inputs(2)
  h, w, k = log_probs.shape
  want = np.asarray(dense_crf(image, log_probs, **PARAMS))
  padded_image = np.pad(image, ((0, 5), (0, 3), (0, 0)), constant_values=128)
  padded_lp = np.pad(log_probs, ((0, 5), (0, 3), (0, 0)))
  valid = np.zeros(padded_image.shape[:2], bool)
  valid[:h, :w] = True
  got = np.asarray(dense_crf(padded_image, padded_lp, valid=valid, **PARAMS))
  np.testing.assert_allclose(got[:h, :w], want, atol=1e-5)


def test_batched_equals_one_by_one_and_zero_iterations_is_softmax():
  pairs = [tiny_inputs(s) for s in (3, 4)]
  images = np.stack([p[0] for p in pairs])
  log_probs = np.stack([p[1] for p in pairs])
  batched = np.asarray(dense_crf(images, log_probs, **PARAMS))
  for i, (image, lp) in enumerate(pairs):
    np.testing.assert_allclose(batched[i], np.asarray(dense_crf(image, lp, **PARAMS)),
                               atol=1e-5)
  np.testing.assert_allclose(np.asarray(dense_crf(images, log_probs, **dict(PARAMS,
                                                                              iterations=0))),
                             np.asarray(jax.nn.softmax(log_probs, -1)), atol=1e-6)
  # The CRF smooths: fewer label changes between neighbouring pixels than the unary's argmax.
  changes = lambda labels: np.sum(labels[:, 1:] != labels[:, :-1])
  assert changes(batched.argmax(-1)) < changes(log_probs.argmax(-1))


@pytest.mark.parametrize('change, message', [
    (dict(image=np.zeros((4, 4, 3), np.float32)), 'must be uint8'),
    (dict(image=np.zeros((4, 4), np.uint8)), r'\[H, W, 3\]'),
    (dict(log_probs=np.zeros((4, 5, 2), np.float32)), 'log_probs'),
    (dict(s_beta=0.0), 's_beta=0.0 must be > 0'),
    (dict(iterations=-1), 'iterations=-1'),
])
def test_bad_inputs_are_named(change, message):
  args = dict(PARAMS, image=np.zeros((4, 4, 3), np.uint8),
              log_probs=np.zeros((4, 4, 2), np.float32))
  args.update(change)
  image, log_probs = args.pop('image'), args.pop('log_probs')
  with pytest.raises(ValueError, match=message):
    dense_crf(image, log_probs, **args)
