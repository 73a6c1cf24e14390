"""Exact rewrites of convolutions and pooling that XLA:CPU computes faster; CPU only.

Each function here computes what its lax/flax counterpart computes (tests/test_cpu_kernels.py
checks values and gradients against them), more cheaply on XLA's CPU backend
(benchmarks/RESULTS.md, "Optimisation record", has the profiles). `layers.Conv`,
`layers.max_pool` and `layers.materialize` use them only while `active()`: JAX's backend is
the CPU and the switch (`model.cpu_kernels`, set by DeepLab through `allowed`) allows them.
Everywhere else the model is plain nn.Conv / lax / nn.max_pool, with no custom gradient, so
forward-mode differentiation (jax.jvp, jax.linearize) goes through it. The custom gradients
here (`_pointwise`, `_slice_max`) have no forward-mode rule.
"""

import contextlib
import contextvars
import functools
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

# Read while tracing: whether the model being traced allows these kernels (DeepLab sets it from
# model.cpu_kernels; a layer used on its own sees the config's default, allowed), and whether a
# test forces them onto a backend other than the CPU.
_ALLOWED = contextvars.ContextVar('cpu_kernels_allowed', default=True)
_FORCED = contextvars.ContextVar('cpu_kernels_forced', default=False)


# Depthwise convs as sums of taps (`_depthwise_taps`); benchmarks turn it off to time XLA's own.
DEPTHWISE_TAPS = True


def _backend() -> str:
  return jax.default_backend()


def active() -> bool:
  """Whether layers trace the CPU kernels now: allowed, and the backend is the CPU (or forced)."""
  return _ALLOWED.get() and (_FORCED.get() or _backend() == 'cpu')


@contextlib.contextmanager
def allowed(allow: bool):
  """Within the block, layers use the CPU kernels on the CPU if `allow`, never if not."""
  token = _ALLOWED.set(bool(allow))
  try:
    yield
  finally:
    _ALLOWED.reset(token)


@contextlib.contextmanager
def forced():
  """Within the block, allowed kernels are used on every backend: for tests that compare the
  two paths on a GPU or TPU. Only what is traced within the block is affected."""
  token = _FORCED.set(True)
  try:
    yield
  finally:
    _FORCED.reset(token)


# --------------------------------------------------------------------------- convolutions


def _out_size(size: int, k: int, rate: int, pad: Tuple[int, int]) -> int:
  """Output size of a stride-1 conv axis."""
  return size + pad[0] + pad[1] - (k - 1) * rate


def _tap_outputs(size: int, k: int, rate: int, pad: Tuple[int, int]):
  """[(tap, first, end)]: the outputs [first, end) of a stride-1 conv axis that each tap reads
  the input for (it reads padding for the others); taps that only read padding are left out."""
  out = _out_size(size, k, rate, pad)
  spans = [(i, max(0, pad[0] - i * rate), min(out, size + pad[0] - i * rate)) for i in range(k)]
  return [(i, lo, hi) for i, lo, hi in spans if hi > lo]


def _useful_taps(size: int, k: int, rate: int, pad: Tuple[int, int]) -> Tuple[int, int]:
  """(first, last) taps of a stride-1 conv axis that read the input somewhere, not only padding.

  Output y (0 <= y < out) reads input y - pad[0] + i * rate through tap i. A tap whose reads
  all fall in the zero padding adds exactly zero to the output and gets exactly zero gradient,
  so dropping it changes nothing but the cost. ASPP's large rates on small feature maps are
  the case: rates 24 and 36 on 17 x 17 (a 129 crop at output stride 8) leave the centre tap.
  """
  useful = [i for i, _, _ in _tap_outputs(size, k, rate, pad)]
  return (useful[0], useful[-1]) if useful else (0, k - 1)


# XLA:CPU computes a stride-1 conv tap by tap (`_tap_sum`) where less than this fraction of its
# multiply-adds read the input (the rest read zero padding). Over the shapes of
# `python benchmarks/conv_taps.py` the tap sum took 1.0-1.6 (mostly 1.1-1.3) times the time
# of the conv's useful fraction, so below 0.75 it is faster (benchmarks/RESULTS.md,
# "Optimisation record", item 10).
TAP_SUM_BELOW = 0.75


def useful_fraction(lhs_shape, rhs_shape, padding, rates) -> float:
  """The fraction of a stride-1 NHWC x HWIO conv's multiply-adds that read the input, not
  padding, over the taps that read it somewhere (`conv_general_dilated` drops the others)."""
  fraction = 1.0
  for a in (0, 1):
    size, k = lhs_shape[1 + a], rhs_shape[a]
    spans = _tap_outputs(size, k, rates[a], padding[a])
    fraction *= (sum(hi - lo for _, lo, hi in spans) /
                 max(1, len(spans) * _out_size(size, k, rates[a], padding[a])))
  return fraction


def tap_sum_pays(lhs_shape, rhs_shape, padding, rates) -> bool:
  """Whether XLA:CPU is expected to compute this stride-1 NHWC x HWIO conv (taps that only
  read padding already dropped) faster tap by tap than as a convolution (TAP_SUM_BELOW)."""
  if any(p < 0 for pair in padding for p in pair):
    return False
  if not all(_tap_outputs(lhs_shape[1 + a], rhs_shape[a], rates[a], padding[a]) for a in (0, 1)):
    return False  # no output, or none that reads the input
  return useful_fraction(lhs_shape, rhs_shape, padding, rates) < TAP_SUM_BELOW


def _tap_sum(x, w, padding, rates, precision):
  """A stride-1 NHWC x HWIO conv as a sum over taps of 1 x 1 products, each over only the
  outputs whose tap reads the input.

  Exact (the products left out are those with zero padding); the cost is the useful
  multiply-adds plus slicing the input, against every tap at every output for a conv. ASPP's
  rates on small maps are the case: rate 12 on a 33 x 33 map (a 257 crop at output stride 8)
  spends 57 % of a conv's multiply-adds on the input, rate 24 26 %.
  """
  out = [_out_size(x.shape[1 + a], w.shape[a], rates[a], padding[a]) for a in (0, 1)]
  rows = _tap_outputs(x.shape[1], w.shape[0], rates[0], padding[0])
  cols = _tap_outputs(x.shape[2], w.shape[1], rates[1], padding[1])
  y = None
  for i, r0, r1 in rows:
    s0 = r0 - padding[0][0] + i * rates[0]
    for j, c0, c1 in cols:
      t0 = c0 - padding[1][0] + j * rates[1]
      part = _pointwise(x[:, s0:s0 + r1 - r0, t0:t0 + c1 - c0], w[i, j], precision)
      part = jnp.pad(part, ((0, 0), (r0, out[0] - r1), (c0, out[1] - c1), (0, 0)))
      y = part if y is None else y + part
  return y


def _depthwise_taps(x, w, strides, padding, rates):
  """A depthwise NHWC x HWIO conv (w [kh, kw, 1, C]) as a sum over its taps of the padded,
  shifted (and strided) input times that tap's C weights.

  Exact up to the order of the sum. XLA:CPU runs a grouped convolution with one channel a group
  hundreds of times below its rate for dense convs (FastFCN's JPU at 512 x 512: 0.2 against
  about 90 G multiply-adds a second, benchmarks/jpu_modules.py); these elementwise products
  and their gradients (slices, pads and sums) run at its memory's rate. Products of a low
  precision input are summed in float32, as a convolution accumulates.
  """
  kh, kw = w.shape[:2]
  dtype = x.dtype
  acc = jnp.promote_types(dtype, jnp.float32)
  padded = jax.lax.pad(x, jnp.zeros((), dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0),
                                                 (0, 0, 0)))
  out = [(padded.shape[1 + a] - (w.shape[a] - 1) * rates[a] - 1) // strides[a] + 1
         for a in (0, 1)]
  y = None
  for i in range(kh):
    for j in range(kw):
      start = (0, i * rates[0], j * rates[1], 0)
      limit = (x.shape[0], start[1] + (out[0] - 1) * strides[0] + 1,
               start[2] + (out[1] - 1) * strides[1] + 1, x.shape[3])
      tap = jax.lax.slice(padded, start, limit, (1, strides[0], strides[1], 1))
      part = tap.astype(acc) * w[i, j, 0].astype(acc)
      y = part if y is None else y + part
  return y.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pointwise(x, w, precision=None):
  """1 x 1 conv of NHWC `x` with `w` [C_in, C_out] as a product over channels.

  Its gradient is written out to choose the operand that XLA's CPU backend lays out again (a
  transpose) for the kernel's gradient, a product over pixels: autodiff's choice is always
  the output gradient. Here it is the input when that has at most half the channels (a
  bottleneck's 1 x 1 expansion, a strided shortcut) and the output gradient otherwise (a 1 x 1
  reduction, whose input is the wide residual stream). benchmarks/RESULTS.md, "Optimisation
  record", has the profiles.
  """
  return jax.lax.dot_general(x, w, (((3,), (0,)), ((), ())), precision=precision)


def _pointwise_fwd(x, w, precision):
  return _pointwise(x, w, precision), (x, w)


def _pointwise_bwd(precision, residuals, g):
  x, w = residuals
  dx = jax.lax.dot_general(g, w, (((3,), (1,)), ((), ())), precision=precision)
  pixels = (((0, 1, 2), (0, 1, 2)), ((), ()))
  if 2 * x.shape[-1] <= g.shape[-1]:
    dw = jax.lax.dot_general(x, g, pixels, precision=precision)
  else:
    dw = jax.lax.dot_general(g, x, pixels, precision=precision).T
  return dx.astype(x.dtype), dw.astype(w.dtype)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """`lax.conv_general_dilated` for NHWC x HWIO: the same function, computed more cheaply on
  XLA:CPU. Three exact rewrites:

  - kernel taps that only ever read zero padding are dropped (`_useful_taps`);
  - a float32 stride-1 conv whose taps read mostly padding (large rates on a small map,
    `tap_sum_pays`) is a sum over taps of products over only the outputs each tap reads the
    input for (`_tap_sum`);
  - a 1 x 1 conv (after that) is a product over channels of the strided input, whose
    gradients XLA's CPU backend computes without a convolution's transposes.
  - a depthwise conv (one filter a channel) is a sum over taps of the shifted input times the
    tap's weights (`_depthwise_taps`).
  Anything else (input dilation, other layouts, string padding) goes to lax unchanged.
  """
  def lax_conv(rhs, padding):
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs)

  if (lhs.ndim != 4 or kwargs or isinstance(padding, str) or
      any(d != 1 for d in (lhs_dilation or (1, 1))) or
      jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) !=
      jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))):
    return lax_conv(rhs, padding)
  # Symbolic sizes (jax.export's shape polymorphism) keep every tap and strided convs, whose
  # symbolic output size a strided slice would spell differently.
  static = all(isinstance(d, int) for d in lhs.shape[1:3])
  rates = tuple(rhs_dilation or (1, 1))
  padding = [tuple(p) for p in padding]
  for axis in (0, 1):
    k = rhs.shape[axis]
    if window_strides[axis] != 1 or k == 1 or not static:
      continue
    first, last = _useful_taps(lhs.shape[1 + axis], k, rates[axis], padding[axis])
    lo = padding[axis][0] - first * rates[axis]
    hi = padding[axis][1] - (k - 1 - last) * rates[axis]
    if (first, last) != (0, k - 1) and lo >= 0 and hi >= 0:
      rhs = jax.lax.slice_in_dim(rhs, first, last + 1, axis=axis)
      padding[axis] = (lo, hi)
  if (static and feature_group_count == 1 and tuple(window_strides) == (1, 1) and
      lhs.dtype == jnp.float32 and tap_sum_pays(lhs.shape, rhs.shape, padding, rates)):
    return _tap_sum(lhs, rhs, padding, rates, precision)
  if (DEPTHWISE_TAPS and static and feature_group_count == lhs.shape[-1] == rhs.shape[-1] and
      rhs.shape[2] == 1 and rhs.shape[:2] != (1, 1)):
    return _depthwise_taps(lhs, rhs, window_strides, padding, rates)
  if (rhs.shape[:2] != (1, 1) or any(p != (0, 0) for p in padding) or
      (not static and tuple(window_strides) != (1, 1))):
    return lax_conv(rhs, padding)
  x = lhs[:, ::window_strides[0], ::window_strides[1]]
  if feature_group_count == 1:
    return _pointwise(x, rhs[0, 0], precision)
  if feature_group_count == lhs.shape[-1] == rhs.shape[-1]:  # depthwise, multiplier 1
    return x * rhs[0, 0, 0]
  return lax_conv(rhs, padding)


# --------------------------------------------------------------------------- residual streams


def materialize(x: jax.Array) -> jax.Array:
  """`x`, which XLA:CPU then computes once instead of again inside each of its consumers.

  XLA:CPU fuses cheap elementwise producers into every consumer, duplicating them. Along a
  residual stream (x_k = relu(bn(conv(...)) + x_{k-1})) that means a consumer such as the
  layout copy for a kernel gradient recomputes the whole stream back to the block's first
  unit, for every unit: quadratic work in the depth, read with strided loads. XLA does not
  duplicate expensive ops, and a float division is one, so `x` is divided by a one that XLA
  cannot fold ((bits | 1) & 1 of x's first element). x / 1 is exact, as is its gradient.
  """
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return x
  bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(x).astype(jnp.float32), jnp.int32)
  one = jax.lax.convert_element_type((bits | 1) & 1, x.dtype)
  return x / one


# --------------------------------------------------------------------------- max pooling


def max_pool(x: jax.Array, window_shape: Sequence[int], strides: Sequence[int],
             padding='VALID') -> jax.Array:
  """nn.max_pool over the spatial axes of NHWC `x` (padding 'SAME', 'VALID' or pairs).

  The maximum of the window's strided slices of `x` padded with -inf, with its gradient
  written out (`_slice_max`): each output's gradient goes to the first tap that equals it, as
  reduce_window's does, so values and gradients are those of nn.max_pool. For nn.max_pool's
  reduce_window XLA:CPU computes the gradient as a reduce_window over (value, index) pairs
  with an index grid per axis, among the largest ops in a profile of the CamVid CPU recipe's
  step (benchmarks/RESULTS.md, "Optimisation record", item 7).
  """
  if isinstance(padding, str):
    pads = jax.lax.padtype_to_pads(x.shape[1:-1], window_shape, strides, padding)
  else:
    pads = [tuple(p) for p in padding]
  padded = jnp.pad(x, [(0, 0)] + list(pads) + [(0, 0)], constant_values=-jnp.inf)
  return _slice_max(padded, tuple(window_shape), tuple(strides))


def _taps(padded, window_shape, strides):
  """The window's taps: (start, the strided slice of `padded` read from there)."""
  out = [(n - k) // s + 1 for n, k, s in zip(padded.shape[1:-1], window_shape, strides)]
  for offset in np.ndindex(*window_shape):
    start = (0,) + offset + (0,)
    limit = ((padded.shape[0],) + tuple(o + (m - 1) * s + 1 for o, m, s in
                                        zip(offset, out, strides)) + (padded.shape[-1],))
    yield start, jax.lax.slice(padded, start, limit, (1,) + tuple(strides) + (1,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _slice_max(padded, window_shape, strides):
  result = None
  for _, tap in _taps(padded, window_shape, strides):
    result = tap if result is None else jnp.maximum(result, tap)
  return result


def _slice_max_fwd(padded, window_shape, strides):
  y = _slice_max(padded, window_shape, strides)
  return y, (padded, y)


def _slice_max_bwd(window_shape, strides, residuals, g):
  padded, y = residuals
  grad, taken = jnp.zeros_like(padded), jnp.zeros(y.shape, bool)
  for start, tap in _taps(padded, window_shape, strides):
    first = (tap == y) & ~taken
    taken = taken | first
    # The transpose of the strided slice: a pad with interior (stride - 1) zeros.
    config = [(0, 0, 0)] + [
        (o, n - o - ((m - 1) * s + 1), s - 1)
        for o, n, m, s in zip(start[1:-1], padded.shape[1:-1], y.shape[1:-1], strides)] + [
            (0, 0, 0)]
    grad = grad + jax.lax.pad(jnp.where(first, g, 0).astype(g.dtype), jnp.zeros((), g.dtype),
                              config)
  return (grad,)


_slice_max.defvjp(_slice_max_fwd, _slice_max_bwd)
