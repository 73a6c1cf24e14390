"""Training and evaluation: train_and_evaluate(config, workdir) and evaluate_checkpoint(...)."""

import signal
import threading
import time

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import numpy as np
import tensorflow as tf

from deeplab_jax import checkpointing
from deeplab_jax import data
from deeplab_jax import evaluate as evaluate_lib
from deeplab_jax import inference
from deeplab_jax import optim
from deeplab_jax import pretrained
from deeplab_jax import sharding
from deeplab_jax import steps
from deeplab_jax.data import input_pipeline
from deeplab_jax.errors import UserError
from deeplab_jax.models import registry
from deeplab_jax.models import unet


class NonFiniteLossError(RuntimeError):
  pass


def _check_finite(pending, last_checkpoint, workdir):
  """Fetches the pending step metrics; raises if any loss or gradient is not finite."""
  fetched = jax.device_get(pending)
  for step, m in fetched:
    if not (np.isfinite(m['loss']) and np.isfinite(m['grad_norm']) and m['state_finite']):
      where = (f'the last good checkpoint (step {last_checkpoint}) in {workdir}/checkpoints '
               'is intact' if last_checkpoint is not None else 'no checkpoint was written')
      raise NonFiniteLossError(
          f'non-finite training at step {step}: loss {float(m["loss"])}, gradient norm '
          f'{float(m["grad_norm"])}, parameters finite: {bool(m["state_finite"])}; stopping: '
          f'{where}. Lower optim.learning_rate or set optim.grad_clip_norm.')
  return fetched


# --------------------------------------------------------------------------- entry points


class _Setup:
  """Everything train and eval share: mesh, data, model, optimizer, state, checkpoints."""

  def __init__(self, config, workdir, training: bool = True):
    tf.config.set_visible_devices([], 'GPU')  # tf.data only; accelerators are JAX's.
    steps.validate_config(config)
    self.mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_size(self.mesh, config.train.batch_size, 'train.batch_size')
    sharding.check_batch_size(self.mesh, config.eval.batch_size, 'eval.batch_size')
    sharding.check_spatial(self.mesh)
    # Crops whose height the mesh's `spatial` axis does not divide are padded (ignored rows).
    self.train_height = sharding.padded_height(config.data.crop_size[0], self.mesh,
                                               config.data.pad_height_multiple)
    unet.check_train_crop(config.model, self.train_height, config.data.crop_size[1])
    spatial, image_height = self.mesh.shape.get('spatial', 1), (
        self.train_height + 2 * unet.train_margin(config.model))
    if image_height % spatial:
      raise UserError(f'mesh spatial={spatial} does not divide the {image_height} rows of a '
                      'training crop with its U-Net context; use a spatial size that divides '
                      f'{image_height}.')
    self.dataset = data.get_dataset(config.data)
    self.model = registry.build_model(config.model, self.dataset.num_classes)
    self.schedule = optim.learning_rate_schedule(config.optim, config.train.num_steps)
    self.tx = optim.make_optimizer(config.optim, config.train.num_steps,
                                   freeze_batch_norm=config.model.freeze_batch_norm_params)
    self.rng = jax.random.key(config.seed)
    init, self.abstract_state, self.state_shardings = steps.create_train_state(
        self.model, self.tx, config, self.mesh, self.rng)
    self.manager = checkpointing.make_manager(workdir, config.train.keep_checkpoints)
    # The newest readable checkpoint. Training sets damaged ones aside
    # (checkpoints_unreadable/); an evaluator, perhaps beside a running trainer, only skips them.
    self.state, latest = checkpointing.restore_latest(self.manager, self.abstract_state,
                                                      set_aside=training)
    if latest is not None:
      logging.info('Resuming from %s/checkpoints step %d.', workdir, latest)
    else:
      self.state = init(self.rng)
      if config.init_from:
        self.state = _init_from(self.state, self.state_shardings, config.init_from)
    self.latest_checkpoint = latest
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0)
    self.eval_model = inference.build_eval_model(config, self.dataset.num_classes)
    self.eval_step = evaluate_lib.make_eval_fn(self.eval_model, self.dataset.num_classes,
                                               config, self.mesh)
    params = sum(x.size for x in jax.tree.leaves(self.abstract_state.params))
    # Whole models (FCN, U-Net, FC-DenseNet) have no separate backbone to name.
    name = (config.model.name if config.model.name in registry.WHOLE_MODELS
            else f'{config.model.name}/{config.model.backbone.name}')
    logging.info('Model %s OS%d: %d parameters; mesh %s.', name, config.model.output_stride,
                 params, dict(self.mesh.shape))
    if config.optim.ema_decay:
      logging.info('Average of the weights with decay %s: evaluation scores it, not the raw '
                   'weights.', config.optim.ema_decay)

  def evaluate(self, config, workdir, step):
    result = evaluate_lib.evaluate(config, self.state, self.eval_step, self.dataset, self.mesh,
                                   self.writer, workdir, step)
    logging.info('Step %d %s: mIoU %.4f, pixel accuracy %.4f.', step, config.eval.split,
                 result['miou'], result['pixel_accuracy'])
    return result


def _init_from(state, shardings, source: str):
  """The fresh state with every matching parameter and statistic loaded from `source`."""
  merged, report = pretrained.merge({'params': state.params, 'batch_stats': state.batch_stats},
                                    pretrained.load_variables(source))
  pretrained.log_report(source, report)

  def put(value, sharding):  # fresh leaves are still the state's own (global) arrays
    if isinstance(value, jax.Array):
      return value
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  state = state.replace(params=jax.tree.map(put, merged['params'], shardings.params),
                        batch_stats=jax.tree.map(put, merged['batch_stats'],
                                                 shardings.batch_stats))
  if state.ema is None:
    return state
  # The average of the weights (optim.ema_decay) starts from the loaded weights.
  return state.replace(ema=jax.jit(optim.ema_start, out_shardings=shardings.ema)(
      {'params': state.params, 'batch_stats': state.batch_stats}))


def evaluate_checkpoint(config, workdir: str):
  """Evaluates the workdir's latest readable checkpoint once on config.eval.split."""
  setup = _Setup(config, workdir, training=False)
  step = setup.latest_checkpoint
  if step is None:
    if not config.init_from:
      raise UserError(f'--mode=eval: no checkpoint in {workdir}/checkpoints to evaluate, and '
                      'no config.init_from.')
    logging.info('No checkpoint in %s/checkpoints: evaluating init_from=%s as step 0.', workdir,
                 config.init_from)
    step = 0
  result = setup.evaluate(config, workdir, step)
  setup.writer.flush()
  return result


def evaluate_continuously(config, workdir: str, sleep=time.sleep, clock=time.monotonic):
  """Evaluates every new checkpoint in the workdir as it appears (--mode=eval_continuous).

  Stops by itself once the checkpoint of the last training step (train.num_steps) is
  evaluated, or when no new checkpoint has appeared for eval.wait_seconds. Steps that already
  have a line in evals.jsonl for this split are not evaluated again.
  """
  setup = _Setup(config, workdir, training=False)
  done = set()
  last_seen = clock()
  while True:
    setup.manager.reload()
    new = [s for s in setup.manager.all_steps() if s not in done]
    for step in sorted(new):
      done.add(step)
      if evaluate_lib.is_evaluated(workdir, config, step):
        continue
      try:
        setup.state = checkpointing.restore(setup.manager, step, setup.abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        # Removed by checkpoint retention since it was listed, or damaged: the trainer's.
        if not checkpointing.is_damaged(e):
          raise
        logging.warning('Checkpoint %d cannot be read (%s); not evaluated.', step,
                        str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        continue
      setup.evaluate(config, workdir, step)
      setup.writer.flush()
    if new:
      last_seen = clock()
    if done and max(done) >= config.train.num_steps:
      logging.info('Evaluated the final checkpoint (step %d); stopping.', max(done))
      return
    if clock() - last_seen > config.eval.wait_seconds:
      logging.warning('No new checkpoint in %s/checkpoints for %d s; stopping.', workdir,
                      config.eval.wait_seconds)
      return
    sleep(config.eval.poll_seconds)


def train_and_evaluate(config, workdir: str):
  """Trains from the workdir's latest checkpoint (or from scratch), evaluating periodically."""
  setup = _Setup(config, workdir)
  num_steps = config.train.num_steps
  start = int(jax.device_get(setup.state.step))
  shared = set(config.eval.split.split('+')) & set(config.data.train_split.split('+'))
  if shared:
    logging.warning('eval.split=%r shares %s with data.train_split=%r: its mIoU measures the '
                    'fit to training frames, not generalisation.', config.eval.split,
                    sorted(shared), config.data.train_split)
  train_step = jax.jit(
      steps.make_train_step(setup.model, setup.tx, setup.schedule, setup.dataset.ignore_label,
                            config.train.top_k_percent_pixels,
                            config.train.hard_example_mining_step,
                            steps.class_weights(config, setup.dataset.num_classes),
                            config.optim.ema_decay, steps.dual_task_loss(config)),
      in_shardings=(setup.state_shardings, None, sharding.replicated(setup.mesh)),
      out_shardings=(setup.state_shardings, sharding.replicated(setup.mesh)),
      donate_argnums=0)
  if start >= num_steps:
    logging.info('Training already finished at step %d.', start)
    if not evaluate_lib.is_evaluated(workdir, config, start):
      setup.evaluate(config, workdir, start)
    return setup.state
  if (start and start % config.train.eval_every_steps == 0
      and not evaluate_lib.is_evaluated(workdir, config, start)):
    setup.evaluate(config, workdir, start)  # the run that saved `start` stopped before its eval

  batches = input_pipeline.train_batches(setup.dataset, config, start_step=start)
  preemption = _Preemption()
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=setup.writer,
                                           every_steps=config.train.log_every_steps)
  state, pending, last_checkpoint = setup.state, [], setup.latest_checkpoint
  setup.writer.write_hparams({k: str(v) for k, v in config.items()})
  logging.info('Training steps %d..%d.', start + 1, num_steps)
  try:
    for step in range(start + 1, num_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = sharding.to_global(setup.mesh, sharding.pad_height(
            next(batches), setup.train_height, setup.dataset.ignore_label))
        state, step_metrics = train_step(state, batch, setup.rng)
      pending.append((step, step_metrics))
      report(step)
      last = step == num_steps
      preempted = not last and preemption.reached(step, setup.manager)
      checkpoint_now = step % config.train.checkpoint_every_steps == 0 or last or preempted
      if step % config.train.log_every_steps == 0 or checkpoint_now:
        fetched = _check_finite(pending, last_checkpoint, workdir)
        pending = []
        mean = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]}
        setup.writer.write_scalars(step, {f'train/{k}': v for k, v in mean.items()})
      if checkpoint_now:
        checkpointing.save(setup.manager, step, state)
        last_checkpoint = step
      if preempted:
        logging.warning('Preempted (SIGTERM) after step %d: checkpoint saved in %s/checkpoints; '
                        'the same command continues from it.', step, workdir)
        break
      if step % config.train.eval_every_steps == 0 or last:
        setup.state = state
        setup.evaluate(config, workdir, step)
  finally:
    preemption.close()
    setup.manager.wait_until_finished()
    setup.writer.flush()
  return state


class _Preemption:
  """SIGTERM asks the run to save at the next step boundary and stop (exit code 0).

  With several processes JAX's preemption service (started by jax.distributed.initialize)
  catches the signal and picks one step at which every process stops, through orbax's
  `reached_preemption`. A single process catches SIGTERM itself.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int, manager) -> bool:
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self.requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

