"""The one output-stride rule: which units keep their stride, the atrous rate of every unit,
and the rates of the head when a model runs at another output stride.

A backbone is a sequence of units, each with a nominal stride. Once the running stride reaches
the target output stride, a unit's stride becomes 1 and every later unit runs at a rate
multiplied by it, so that each filter still sees the same image area (v3 paper, section 3.2).
"""

from typing import List, Sequence, Tuple

from deeplab_jax.errors import UserError

OUTPUT_STRIDES = (8, 16, 32)
# Where a removed stride's rate takes effect: 'after' the unit whose stride was removed
# (TF-slim's stack_blocks_dense, torchvision's replace_stride_with_dilation), or 'at' it, so a
# dilated block runs at one rate throughout (the v3 paper's description).
RATE_CHANGES = ('after', 'at')


def check_output_stride(output_stride: int, field: str = 'output_stride') -> None:
  """UserError unless `output_stride` is one of OUTPUT_STRIDES."""
  if output_stride not in OUTPUT_STRIDES:
    raise UserError(f'{field}={output_stride} is not one of {OUTPUT_STRIDES}.')


def unit_plan(unit_strides: Sequence[int], output_stride: int, current_stride: int,
              rate_change: str = 'after') -> List[Tuple[int, int]]:
  """(stride, rate) of every unit for a target output stride.

  Args:
    unit_strides: each unit's nominal stride.
    output_stride: one of OUTPUT_STRIDES.
    current_stride: the stride of the input to the first unit (the stem's).
    rate_change: one of RATE_CHANGES.
  """
  check_output_stride(output_stride)
  if rate_change not in RATE_CHANGES:
    raise ValueError(f'rate_change={rate_change!r} is not one of {RATE_CHANGES}.')
  rate, plan = 1, []
  for stride in unit_strides:
    if stride > 1 and current_stride >= output_stride:
      if rate_change == 'at':
        rate *= stride
      plan.append((1, rate))
      if rate_change == 'after':
        rate *= stride
    else:
      plan.append((stride, rate))
      current_stride *= stride
  return plan


def rescale_rates(rates: Sequence[int], output_stride: int, new_output_stride: int,
                  field: str, stride_field: str = 'output_stride') -> Tuple[int, ...]:
  """Rates of a layer after the backbone for the model run at `new_output_stride`.

  Halving the output stride doubles the feature map, so the rates double to keep the same
  image area; a rate that stops being a whole number raises a UserError naming `field`.
  """
  check_output_stride(new_output_stride, stride_field)
  scaled = tuple(r * output_stride / new_output_stride for r in rates)
  if any(r != int(r) or r < 1 for r in scaled):
    raise UserError(f'{stride_field}={new_output_stride} with model.output_stride={output_stride} '
                    f'turns {field}={tuple(rates)} into {scaled}; rates must stay whole numbers.')
  return tuple(int(r) for r in scaled)
