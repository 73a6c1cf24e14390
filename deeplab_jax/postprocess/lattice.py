"""A permutohedral lattice (Adams, Baek and Davis, 2010) in JAX: Gaussian filtering in a
d-dimensional feature space in time linear in the number of points.

Every point is splatted onto the d + 1 vertices of the lattice simplex that holds it (with
barycentric weights), the lattice is blurred with [1/2, 1, 1/2] along each of its d + 1 axes,
and the values are sliced back at the points. The result approximates
`out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j` for features `f` already divided by the kernel's
standard deviations; it is the same computation, step for step, as the reference dense CRF's.

The lattice is a hash table of its vertices' integer keys, built in XLA with static shapes:
`_dedup` inserts every key at once by a scatter-min of row numbers into a table indexed by a
hash, keeps the rows whose key matches the winner of their slot, and rehashes the rest with a
new seed until none is left (three rounds for a photograph). The neighbours along each axis
are found by looking up key + u_j the same way; the - neighbours are their inverse.

XLA needs static shapes, and a point set has at most N * (d + 1) vertices but usually far fewer
(139,070 for the 250,000 pixels of a 500 x 500 CamVid image with the VOC parameters). `build`
therefore runs in two jitted stages and reads the vertex count on the host in between, so that
the blur, which runs every mean-field iteration, touches only a capacity rounded up from the
vertices in use.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


# XLA's CPU backend hands chains of elementwise ops to its experimental XNNPACK/YNNPACK fusions,
# which here split the gathers and shifted slices from the sums they feed, materialising each;
# without them a mean-field iteration ran 1.7x faster. LLVM's full optimisation is kept even
# where XLA_FLAGS lowers it (the test suite does, for compile time): at -O0 the CRF evaluation
# test ran 3x slower. Other backends never see these options.
_CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': '',
                'xla_cpu_experimental_xnn_fusion_type': '',
                'xla_backend_optimization_level': 3}


def jit(fn=None, **kwargs):
  """jax.jit, with _CPU_OPTIONS when the default backend is the CPU (decided at each call)."""
  if fn is None:
    return functools.partial(jit, **kwargs)
  plain = jax.jit(fn, **kwargs)
  cpu = jax.jit(fn, compiler_options=_CPU_OPTIONS, **kwargs)

  @functools.wraps(fn)
  def call(*args, **kw):
    # Called inside another jit (its tracers as arguments), only the outer one takes options.
    traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kw)))
    return (cpu if jax.default_backend() == 'cpu' and not traced else plain)(*args, **kw)
  return call


class Lattice(NamedTuple):
  """A lattice built for N points in d dimensions; filters any [N, C] values.

  Rows 0..num_vertices-1 of the lattice are its vertices; rows up to `capacity` are unused and
  row `capacity` stands for every missing neighbour (it stays zero).
  """
  vertex: jax.Array         # [N, d + 1] int32: each point's simplex vertices
  weight: jax.Array         # [N, d + 1] float32: their barycentric weights
  neighbours: jax.Array     # [d + 1, 2, capacity + 1] int32: +/- neighbours along each axis
  num_vertices: jax.Array   # [] int32


def _elevate(features):
  """Maps [N, d] features onto the hyperplane sum(x) = 0 of R^(d+1), scaled so that the lattice
  blur has unit standard deviation in feature space (Adams et al., section 3.1)."""
  d = features.shape[-1]
  inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
  scale = inv_std / np.sqrt(np.arange(1, d + 1) * np.arange(2, d + 2, dtype=np.float64))
  cf = features * jnp.asarray(scale, features.dtype)                  # [N, d]
  suffix = jnp.flip(jnp.cumsum(jnp.flip(cf, -1), -1), -1)            # sum_{k >= j} cf_k
  j = jnp.arange(1, d + 1, dtype=features.dtype)
  rest = jnp.concatenate([suffix[:, 1:], jnp.zeros_like(suffix[:, :1])], -1) - j * cf
  return jnp.concatenate([suffix[:, :1], rest], -1)                  # [N, d + 1]


def _simplex(elevated):
  """The simplex holding each elevated point: its d + 1 integer vertex keys [N, d + 1, d + 1]
  and barycentric weights [N, d + 1] (Adams et al., section 3.1 and appendix)."""
  n, d1 = elevated.shape
  d = d1 - 1
  nearest = jnp.round(elevated / d1)
  rem0 = nearest * d1                                                # nearest remainder-0 point
  total = jnp.sum(nearest, -1, keepdims=True).astype(jnp.int32)
  diff = elevated - rem0
  # rank[i]: how many coordinates of diff exceed coordinate i (ties broken by index).
  i = jnp.arange(d1)
  greater = (diff[:, None, :] > diff[:, :, None]) | (
      (diff[:, None, :] == diff[:, :, None]) & (i[None, :] < i[:, None])[None])
  rank = jnp.sum(greater, -1).astype(jnp.int32) + total
  low, high = rank < 0, rank >= d1
  rank = rank + d1 * low - d1 * high
  rem0 = rem0 + d1 * low - d1 * high
  value = (elevated - rem0) / d1
  slot = d - rank                                                    # in 0..d, a permutation
  # bary[s] = sum of value_i over slot_i == s, minus that over slot_i == s - 1, as one-hot
  # sums (XLA's CPU runs scatters serially).
  s = jnp.arange(d + 2)
  sign = ((slot[..., None] == s).astype(value.dtype) -
          (slot[..., None] + 1 == s).astype(value.dtype))              # [N, d + 1, d + 2]
  bary = jnp.sum(value[..., None] * sign, axis=1)
  weight = bary[:, :d1].at[:, 0].add(1.0 + bary[:, d + 1])
  # Vertex r: rem0 plus the canonical offset of remainder r at each coordinate's rank, that is
  # r where rank <= d - r and r - (d + 1) elsewhere.
  r = jnp.arange(d1, dtype=jnp.int32)[None, :, None]
  keys = rem0.astype(jnp.int32)[:, None, :] + jnp.where(rank[:, None, :] <= d - r, r, r - d1)
  return keys, weight


def _hash(keys, seed):
  """[M, c] int32 keys -> [M] uint32 (multiply-xorshift mixing, seeded)."""
  h = jnp.full(keys.shape[:1], seed, jnp.uint32)
  for c in range(keys.shape[1]):
    h = (h ^ keys[:, c].astype(jnp.uint32)) * jnp.uint32(0x9E3779B1)
    h = h ^ (h >> 15)
  h = h * jnp.uint32(0x85EBCA77)
  return h ^ (h >> 13)


def _dedup(keys, active):
  """owner[i]: the first row whose key equals row i's, for the `active` rows of [M, c] keys
  (M for the others). Each round every active row bids its row number for its key's slot in
  a table of 2^ceil(log2 M) slots (scatter-min); rows whose key equals the winner's are done,
  and the rest try again with another hash. The first active row is always done, so the loop
  ends; with few collisions it takes a handful of rounds."""
  m = keys.shape[0]
  bits = max(4, math.ceil(math.log2(m)))
  rows = jnp.arange(m, dtype=jnp.int32)

  def round_(state):
    seed, active, owner = state
    slot = (_hash(keys, seed) >> (32 - bits)).astype(jnp.int32)
    table = jnp.full((1 << bits,), m, jnp.int32).at[slot].min(jnp.where(active, rows, m))
    winner = table[slot]
    match = active & jnp.all(keys[jnp.minimum(winner, m - 1)] == keys, -1)
    return (seed * jnp.uint32(0x27D4EB2F) + jnp.uint32(0x165667B1), active & ~match,
            jnp.where(match, winner, owner))

  _, _, owner = jax.lax.while_loop(lambda state: jnp.any(state[1]), round_,
                                   (jnp.uint32(1), active, jnp.full((m,), m, jnp.int32)))
  return owner


@jit
def _points(features):
  """Stage 1 (static size): each point's vertices, numbered in order of first use."""
  n, d = features.shape
  d1, v = d + 1, n * (d + 1)
  keys, weight = _simplex(_elevate(features.astype(jnp.float32)))
  keys = keys.reshape(v, d1)
  # The last coordinate follows from the others (a key sums to 0).
  owner = _dedup(keys[:, :d], jnp.ones((v,), bool))
  first = owner == jnp.arange(v, dtype=jnp.int32)
  number = jnp.cumsum(first, dtype=jnp.int32) - 1
  vertex = number[owner].reshape(n, d1)
  unique = jnp.zeros((v, d1), jnp.int32).at[jnp.where(first, number, v)].set(keys, mode='drop')
  return vertex, weight, unique, number[-1] + 1


@jit(static_argnames='capacity')
def _neighbours(unique, num_vertices, *, capacity: int):
  """Stage 2 (capacity rows): each vertex's neighbours key +- u_j along the d + 1 axes, where
  u_j = (d + 1) e_j - 1. The + neighbours are looked up in a table of the vertices (rows
  0..capacity-1 of the keys to dedup, so a found key's first row is its vertex); the -
  neighbours are their inverse."""
  unique = unique[:capacity]
  d1 = unique.shape[1]
  valid = jnp.arange(capacity) < num_vertices
  steps = (d1 * jnp.eye(d1, dtype=jnp.int32) - 1)                  # u_j, one per row
  queries = (unique[None] + steps[:, None]).reshape(d1 * capacity, d1)
  owner = _dedup(jnp.concatenate([unique, queries])[:, :d1 - 1], jnp.tile(valid, d1 + 1))
  found = owner[capacity:].reshape(d1, capacity)
  plus = jnp.where(found < num_vertices, found, capacity)
  ids = jnp.arange(capacity, dtype=jnp.int32)
  minus = jax.vmap(lambda p: jnp.full((capacity + 1,), capacity, jnp.int32)
                   .at[p].set(ids, mode='drop').at[capacity].set(capacity))(plus)
  plus = jnp.concatenate([plus, jnp.full((d1, 1), capacity, jnp.int32)], -1)
  return jnp.stack([plus, minus], 1)


def round_capacity(num_vertices: int) -> int:
  """Rounds up to a multiple of 2^(k - 2) for 2^k < num_vertices <= 2^(k + 1): at most 25 %
  more rows than vertices for the blur, and four capacities (compilations) per octave."""
  if num_vertices <= 16:
    return 16
  step = 1 << (math.ceil(math.log2(num_vertices)) - 3)
  return -(-num_vertices // step) * step


def build(features: jax.Array, capacity: int = 0) -> Lattice:
  """Builds the lattice for [N, d] features, already divided by the kernel's standard
  deviations. capacity=0 sizes the lattice from the vertices in use (read on the host)."""
  vertex, weight, unique, num_vertices = _points(features)
  needed = int(num_vertices)
  capacity = capacity or min(round_capacity(needed), unique.shape[0])
  if capacity < needed:
    raise ValueError(f'lattice capacity={capacity} is below the {needed} vertices in use.')
  neighbours = _neighbours(unique, num_vertices, capacity=capacity)
  return Lattice(vertex, weight, neighbours, num_vertices)


def filter_values(lattice: Lattice, values: jax.Array, chunk: int = 0,
                  scale: jax.Array | None = None) -> jax.Array:
  """Gaussian-filters [N, C] values (times `scale` [N, 1] when given) with the lattice: splat,
  blur, slice. Values and scale may come in any shape of N * C and N elements (an image's
  [H, W, C] and [H, W, 1]); the result is [N, C].

  Each stage is its own jitted call, and each of the d + 1 axes of the blur too, so that every
  stage reads a materialised input. Within one jit XLA fuses the stages into one loop that
  recomputes the last blur axis inside every gather of the slice, and the blur axes inside each
  other, which ran slower on the CPU than these separate calls. The splat is a loop over chunks of
  `chunk` points, so that their weighted values stay in the cache on their way to the scatter
  (chunk=0: 4096 on the CPU, all points at once elsewhere, where one big scatter suits the
  hardware); each axis of the blur is one gather of both neighbours; the slice is a sum of row
  gathers, which XLA fuses into one loop.
  """
  n = lattice.vertex.shape[0]
  chunk = min(chunk or (4096 if jax.default_backend() == 'cpu' else n), n)
  grid = _splat(lattice, values, scale, chunk=chunk)
  for axis in range(lattice.neighbours.shape[0]):
    grid = _blur(grid, lattice.neighbours, axis=axis)
  return _slice(lattice, grid)


@jit(static_argnames='chunk')
def _splat(lattice, values, scale, *, chunk):
  n = lattice.vertex.shape[0]
  values = values.reshape(n, -1)                                     # [N, C]
  c = values.shape[1]
  rows = lattice.neighbours.shape[-1]                                # capacity + 1
  if scale is not None:
    values = values * scale.reshape(n, 1)

  def splat(grid, start, size):
    index = jax.lax.dynamic_slice_in_dim(lattice.vertex, start, size)
    weight = jax.lax.dynamic_slice_in_dim(lattice.weight, start, size)
    value = jax.lax.dynamic_slice_in_dim(values, start, size)
    return grid.at[index.reshape(-1)].add((weight[..., None] * value[:, None]).reshape(-1, c))

  full = n // chunk
  grid = jax.lax.fori_loop(0, full, lambda i, grid: splat(grid, i * chunk, chunk),
                           jnp.zeros((rows, c), values.dtype))
  if n > full * chunk:
    grid = splat(grid, full * chunk, n - full * chunk)
  return grid


@jit(static_argnames='axis')
def _blur(grid, neighbours, *, axis):
  """One axis of the blur: [1/2, 1, 1/2] over the +/- neighbours along it."""
  both = grid[neighbours[axis]]                                      # [2, rows, C]
  return grid + 0.5 * (both[0] + both[1])


@jit
def _slice(lattice, grid):
  d1 = lattice.vertex.shape[1]
  out = 0.0
  for r in range(d1):
    out = out + lattice.weight[:, r, None] * grid[lattice.vertex[:, r]]
  return out / (1.0 + 2.0 ** (-(d1 - 1)))
