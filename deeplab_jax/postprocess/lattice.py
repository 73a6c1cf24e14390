"""A permutohedral lattice (Adams, Baek and Davis, 2010) in JAX: Gaussian filtering in a
d-dimensional feature space in time linear in the number of points.

Every point is splatted onto the d + 1 vertices of the lattice simplex that holds it (with
barycentric weights), the lattice is blurred with [1/2, 1, 1/2] along each of its d + 1 axes,
and the values are sliced back at the points. The result approximates
`out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j` for features `f` already divided by the kernel's
standard deviations; it is the same computation, step for step, as the reference dense CRF's.

Hash tables do not suit XLA, so the lattice is built with sorts: the vertices are made unique by
a lexicographic sort of their integer keys, and the neighbours along each axis are found by
sorting the vertices by the line they lie on and their position along it.

XLA needs static shapes, and a point set has at most N * (d + 1) vertices but usually far fewer
(about N / 10 for a 500 x 500 photograph). `build` therefore runs in two jitted stages and reads
the vertex count on the host in between, so that the blur, which runs every mean-field
iteration, touches only a capacity rounded up from the vertices in use.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


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
  slot = d - rank                                                    # in 0..d
  rows = jnp.arange(n)[:, None]
  bary = jnp.zeros((n, d + 2), elevated.dtype)
  bary = bary.at[rows, slot].add(value).at[rows, slot + 1].add(-value)
  weight = bary[:, :d1].at[:, 0].add(1.0 + bary[:, d + 1])
  # Vertex r: rem0 plus the canonical offset of remainder r at each coordinate's rank.
  r = jnp.arange(d1)[:, None]
  canonical = jnp.where(jnp.arange(d1)[None, :] <= d - r, r, r - d1)  # [r, rank]
  keys = rem0.astype(jnp.int32)[:, None, :] + canonical[:, rank].transpose(1, 0, 2)
  return keys, weight


@jax.jit
def _points(features):
  """Stage 1 (static size): each point's vertices, made unique by a sort of their keys."""
  n, d = features.shape
  d1, v = d + 1, n * (d + 1)
  keys, weight = _simplex(_elevate(features.astype(jnp.float32)))
  keys = keys.reshape(v, d1)
  # The last coordinate follows from the others (a key sums to 0).
  *cols, order = jax.lax.sort((*(keys[:, c] for c in range(d)), jnp.arange(v, dtype=jnp.int32)),
                              num_keys=d)
  cols = jnp.stack(cols, -1)
  new = jnp.concatenate([jnp.ones((1,), bool), jnp.any(cols[1:] != cols[:-1], -1)])
  sorted_vertex = jnp.cumsum(new, dtype=jnp.int32) - 1
  vertex = jnp.zeros((v,), jnp.int32).at[order].set(sorted_vertex).reshape(n, d1)
  unique = jnp.zeros((v, d1), jnp.int32).at[sorted_vertex].set(keys[order])
  return vertex, weight, unique, sorted_vertex[-1] + 1


@functools.partial(jax.jit, static_argnames='capacity')
def _neighbours(unique, num_vertices, *, capacity: int):
  """Stage 2 (capacity rows): each vertex's neighbours key +- u_j along the d + 1 axes, where
  u_j = (d + 1) e_j - 1. Along such a line the differences key[i] - key[ref] (i != j, ref) are
  constant and -key[ref] steps by one, so a sort by (line, position) makes neighbours adjacent."""
  unique = unique[:capacity]
  d1 = unique.shape[1]
  invalid = (jnp.arange(capacity) >= num_vertices).astype(jnp.int32)
  ids = jnp.arange(capacity, dtype=jnp.int32)
  missing = jnp.full((1,), capacity, jnp.int32)
  out = []
  for j in range(d1):
    ref = (j + 1) % d1
    line = [unique[:, i] - unique[:, ref] for i in range(d1) if i not in (j, ref)]
    *cols, idx = jax.lax.sort((invalid, *line, -unique[:, ref], ids), num_keys=d1)
    same = (cols[0][1:] == 0) & (cols[0][:-1] == 0)
    for c in cols[1:-1]:
      same &= c[1:] == c[:-1]
    step = same & (cols[-1][1:] == cols[-1][:-1] + 1)
    plus_sorted = jnp.concatenate([jnp.where(step, idx[1:], capacity), missing])
    minus_sorted = jnp.concatenate([missing, jnp.where(step, idx[:-1], capacity)])
    plus = jnp.full((capacity + 1,), capacity, jnp.int32).at[idx].set(plus_sorted)
    minus = jnp.full((capacity + 1,), capacity, jnp.int32).at[idx].set(minus_sorted)
    out.append(jnp.stack([plus, minus]))
  return jnp.stack(out)


def round_capacity(num_vertices: int) -> int:
  """Rounds up to 2^k or 1.5 * 2^k, so that few capacities (and compilations) occur."""
  size = 1 << max(4, math.ceil(math.log2(max(num_vertices, 1))))
  return 3 * size // 4 if 3 * size // 4 >= num_vertices else size


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


def filter_values(lattice: Lattice, values: jax.Array) -> jax.Array:
  """Gaussian-filters [N, C] values with the lattice: splat, blur, slice.

  (Written the way XLA's CPU backend ran fastest: one gather per axis for both neighbours, and
  the splatted values materialised before the scatter.)"""
  n, d1 = lattice.vertex.shape
  c = values.shape[-1]
  rows = lattice.neighbours.shape[-1]                                # capacity + 1
  weighted = jax.lax.optimization_barrier(
      (lattice.weight[..., None] * values[:, None, :]).reshape(n * d1, c))
  grid = jax.ops.segment_sum(weighted, lattice.vertex.reshape(n * d1), num_segments=rows)
  for j in range(d1):
    both = grid[lattice.neighbours[j]]                               # [2, rows, C]
    grid = grid + 0.5 * (both[0] + both[1])
  picked = grid[lattice.vertex.reshape(n * d1)].reshape(n, d1, c)
  alpha = 1.0 / (1.0 + 2.0 ** (-(d1 - 1)))
  return alpha * jnp.einsum('nrc,nr->nc', picked, lattice.weight)
