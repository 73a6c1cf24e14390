"""Defaults shared by every experiment config; each experiment overrides what it changes."""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  """Returns a DeepLabv3+ ResNet-101 OS16 config with the v3+ paper's recipe."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Start a fresh run from pretrained variables: a directory written by deeplab_jax.convert,
  # or another run's workdir. Ignored when the workdir already has a checkpoint (resume).
  config.init_from = ''
  # Keep the host memory glibc frees (deeplab_jax/host_memory.py): auto = where JAX runs on the
  # CPU. deeplab_jax.main's --retain_host_memory overrides it.
  config.retain_host_memory = 'auto'

  config.data = ml_collections.ConfigDict()
  config.data.name = 'synthetic'       # a key of deeplab_jax.data.DATASETS
  config.data.root = ''                # folder holding the data set; '' = download (where possible)
  config.data.cache_dir = '~/.cache/deeplab_jax'  # prepared copies, keyed by the root's contents
  config.data.train_split = 'train'
  config.data.crop_size = (513, 513)   # (height, width) of training crops
  config.data.image_scale = 1.0        # resize every image by this first (0.5 = half resolution)
  # Keep the training split decoded (and resized by image_scale) in memory: no decoding per
  # step, the same batches. For small sets (CamVid at 3/4 scale: 0.43 GiB); stops with an error
  # where it would take more than half of the machine's memory.
  config.data.in_memory = False
  config.data.min_scale = 0.5          # random scale range
  config.data.max_scale = 2.0
  config.data.flip = True              # random left-right flip
  # References: model.gscnn.image_mean/std follow whatever these are set to.
  image_mean = ml_collections.FieldReference((123.675, 116.28, 103.53))
  image_std = ml_collections.FieldReference((58.395, 57.12, 57.375))
  config.data.mean = image_mean  # RGB, 0..255
  config.data.std = image_std
  # Photometric jitter, each a maximum delta (0 = off): brightness in 0..255 units, contrast
  # and saturation as factors in [1 - x, 1 + x], hue as a fraction of the colour wheel.
  config.data.brightness = 0.0
  config.data.contrast = 0.0
  config.data.saturation = 0.0
  config.data.hue = 0.0
  config.data.skip_bad_examples = False  # skip (and count) unreadable or bad pairs, not stop
  config.data.ignore_label = 255       # the 'folder' data set's ignore label
  # Training crops and eval images are padded at the bottom (image with zeros after normalising,
  # label with the ignore label) to a multiple of lcm(this, the mesh's `spatial` size), so that
  # any height splits over `spatial`. The loss and metrics skip padded rows, but the network
  # sees them: they enter BatchNorm's batch statistics in training, and image pooling at
  # evaluation. 1 pads only what the mesh needs; a multiple of every spatial size in use (say 8)
  # gives the same numbers on every mesh.
  config.data.pad_height_multiple = 1

  config.model = ml_collections.ConfigDict()
  # deeplabv1 | deeplabv2 | deeplabv3 | deeplabv3plus (adds the decoder) | fcn | unet |
  # fc_densenet.
  config.model.name = 'deeplabv3plus'
  # aspp (v3, v3+) | aspp_l (v2) | context_module | none (v1, or a cascade alone).
  config.model.context = 'aspp'
  config.model.output_stride = 16
  config.model.input_scales = (1.0,)   # v2: (1.0, 0.75, 0.5), logits fused by max
  config.model.width_multiplier = 1.0  # scales every channel count (tiny test models)
  config.model.dtype = 'float32'       # compute dtype; parameters stay float32
  config.model.bn_momentum = 0.99
  config.model.bn_epsilon = 1e-5
  # Bilinear resizes of the decoder input, input scales and logits map corner to corner (TF1's
  # align_corners=True, as the public DeepLab code and its checkpoints); False: half-pixel.
  config.model.align_corners = False
  # False (TF DeepLab's fine_tune_batch_norm=False, for small batches from init_from): BatchNorm
  # normalises with its moving statistics in training too and leaves them unchanged.
  config.model.fine_tune_batch_norm = True
  # True (only with fine_tune_batch_norm=False): the optimizer also leaves BatchNorm's scale and
  # offset unchanged.
  config.model.freeze_batch_norm_params = False
  # Exact rewrites of convs and pooling that XLA:CPU runs faster (models/cpu_kernels.py), used
  # where JAX's backend is the CPU; False: plain nn.Conv / nn.max_pool everywhere.
  config.model.cpu_kernels = True
  config.model.backbone = ml_collections.ConfigDict()
  # resnet50 | resnet101 | xception65 | xception71 | vgg16 | mobilenetv2
  config.model.backbone.name = 'resnet101'
  config.model.backbone.multi_grid = (1, 2, 4)  # ResNet: per unit of block4; Xception: 3 convs
  config.model.backbone.units = ()     # ResNet: units per block; Xception: (middle units,)
  config.model.backbone.layout = 'deeplab'  # ResNet: deeplab | torchvision | tfslim
  config.model.backbone.beta_stem = False   # ResNet: three 3x3 convs in place of the 7x7
  config.model.backbone.preactivation = False  # Xception: the public TF code's module form
  config.model.backbone.bn_epsilon = 0.0    # 0 = model.bn_epsilon
  config.model.backbone.extra_blocks = 0    # ResNet: cascaded copies of block4 (v3, sec. 3.2)
  config.model.backbone.depth_multiplier = 1.0  # MobileNetV2
  config.model.backbone.fc6_rate = 12       # VGG-16 LargeFOV
  config.model.backbone.fc_features = 1024  # VGG-16: fc6/fc7 channels, 0 = stop at pool5
  config.model.backbone.dropout_rate = 0.5  # VGG-16: after fc6 and fc7
  config.model.aspp = ml_collections.ConfigDict()
  config.model.aspp.atrous_rates = (6, 12, 18)  # also ASPP-L's rates
  config.model.aspp.features = 256
  config.model.aspp.image_pooling = True
  config.model.aspp.dropout_rate = 0.1
  config.model.aspp.separable = False  # depthwise-separable 3x3 branches (Xception)
  config.model.aspp.output_conv = False  # torchvision's extra 3x3 conv after the projection
  # FCN's head as the context module (model.context='fcn'): 3x3 conv -> BN -> ReLU -> dropout
  # -> 1x1 conv to classes, FastFCN's with 512 channels (a quarter of 2048).
  config.model.fcn_head = ml_collections.ConfigDict()
  config.model.fcn_head.features = 512
  config.model.fcn_head.dropout_rate = 0.1
  # A neck between backbone and context module: 'none', or 'jpu' (FastFCN's Joint Pyramid
  # Upsampling, models/jpu.py: an undilated backbone at output stride 32 -> stride-8 features).
  config.model.neck = 'none'
  config.model.jpu = ml_collections.ConfigDict()
  config.model.jpu.features = 512
  config.model.jpu.dilations = (1, 2, 4, 8)
  config.model.jpu.endpoints = ('block2', 'block3', 'features')  # ResNet's strides 8, 16, 32
  config.model.context_module = ml_collections.ConfigDict()
  config.model.context_module.atrous_rates = (1, 1, 2, 4, 8, 16, 1)
  config.model.context_module.features = 256
  config.model.decoder = ml_collections.ConfigDict()
  config.model.decoder.low_level_endpoint = ''  # '' = the backbone's stride-4 endpoint
  config.model.decoder.low_level_features = 48
  config.model.decoder.features = 256
  config.model.decoder.separable = False
  config.model.aux_head = ml_collections.ConfigDict()
  config.model.aux_head.endpoint = ''  # '' = none; torchvision: 'block3' (stride 8 or 16)
  config.model.aux_head.features = 256
  config.model.aux_head.dropout_rate = 0.1
  config.model.aux_head.loss_weight = 0.5
  # FCN on VGG-16 (model.name='fcn'): fcn32s | fcn16s | fcn8s; 'reference' padding (conv1 by
  # 100, ceil pooling, fixed crops) or 'same' (inputs padded to a multiple of 32).
  config.model.fcn = ml_collections.ConfigDict()
  config.model.fcn.variant = 'fcn8s'
  config.model.fcn.padding = 'reference'
  config.model.fcn.learn_upsampling = False  # the reference code's frozen bilinear kernels
  config.model.fcn.at_once = False           # pool4 x 0.01, pool3 x 1e-4 (voc-fcn8s-atonce)
  config.model.fcn.dropout_rate = 0.5
  # U-Net (model.name='unet', no backbone): 'valid' convs (the paper, with overlap-tile
  # mirroring at the image's border) or 'same'; features: the first level's channels.
  config.model.unet = ml_collections.ConfigDict()
  config.model.unet.features = 64
  config.model.unet.padding = 'valid'
  # valid only: training crops come with 92 px of real image context on each side (the paper's
  # tiles), which needs crops of 16 t + 4 px; False mirrors each crop at its own border.
  config.model.unet.train_context = True
  config.model.unet.batch_norm = False
  config.model.unet.dropout_rate = 0.5
  # FC-DenseNet (model.name='fc_densenet', which has no backbone): depth 56 | 67 | 103 picks the
  # paper's layers per block and growth rate; block_layers (odd length) and growth override them.
  config.model.fc_densenet = ml_collections.ConfigDict()
  config.model.fc_densenet.depth = 103
  config.model.fc_densenet.block_layers = ()
  config.model.fc_densenet.growth = 0  # 0: the depth's (12 for 56, else 16)
  config.model.fc_densenet.first_features = 48
  config.model.fc_densenet.dropout_rate = 0.2
  # Gated-SCNN (model.name='gscnn', a ResNet at output stride 8; models/gscnn.py): the ResNet
  # endpoints standing for the paper's WideResNet-38 taps (configs/gscnn_cityscapes.py says why);
  # its ASPP and decoder read model.aspp and model.decoder.
  config.model.gscnn = ml_collections.ConfigDict()
  config.model.gscnn.shape_endpoint = 'stem_stride2'
  config.model.gscnn.side_endpoints = ('block1', 'block2', 'features')
  config.model.gscnn.decoder_endpoint = 'stem_stride2'
  config.model.gscnn.shape_features = (32, 16, 8)  # the gated layers' widths (x width_multiplier)
  config.model.gscnn.canny_thresholds = (10.0, 100.0)  # cv2.Canny's, on 0..255 intensities
  # Canny reads the image's intensities: the model undoes data.normalize with these.
  config.model.gscnn.image_mean = image_mean
  config.model.gscnn.image_std = image_std
  # The dual-task loss (losses.gscnn_losses): weights of the segmentation cross-entropy, the
  # boundary BCE, the attention (<-) and consistency (->) regularisers, and their settings.
  config.model.gscnn.loss = ml_collections.ConfigDict()
  config.model.gscnn.loss.seg = 1.0
  config.model.gscnn.loss.edge = 20.0
  config.model.gscnn.loss.att = 1.0
  config.model.gscnn.loss.dual = 1.0
  config.model.gscnn.loss.boundary_radius = 2      # pixels of label boundary, each side
  config.model.gscnn.loss.att_threshold = 0.8      # att: pixels where sigmoid(edge) > this
  config.model.gscnn.loss.gumbel_tau = 0.5

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 0.01
  config.optim.end_learning_rate = 0.0
  config.optim.power = 0.9             # poly schedule: lr0 * (1 - step / total) ** power
  config.optim.schedule = 'poly'       # or 'step': lr0 * decay_factor ** (step // decay_every)
  config.optim.decay_every_steps = 2000
  config.optim.decay_factor = 0.1
  config.optim.warmup_steps = 0
  config.optim.optimizer = 'sgd'      # or 'rmsprop' (Lasagne's, FC-DenseNet): momentum unused
  config.optim.rmsprop_decay = 0.9
  config.optim.rmsprop_eps = 1e-6
  config.optim.momentum = 0.9
  config.optim.nesterov = False
  config.optim.weight_decay = 1e-4
  config.optim.weight_decay_pattern = r'.*/kernel$'  # regex on 'a/b/kernel' parameter paths
  config.optim.grad_clip_norm = 0.0    # 0 = no clipping
  # ((top-level module, factor), ...): the module trains at factor x the learning rate.
  config.optim.lr_multipliers = ()
  # Weight EMA, in [0, 1), 0 = off: from the initial weights, ema = decay * ema + (1 - decay) * new
  # after each step (params and BatchNorm statistics, no debiasing); eval/predict/export use it.
  config.optim.ema_decay = 0.0

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 16         # global, over all hosts and devices
  config.train.num_steps = 30_000
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 1000
  config.train.keep_checkpoints = 3
  config.train.eval_every_steps = 5000
  # Online hard example mining (DeepLab's flags of the same names): the loss keeps the hardest
  # top_k_percent_pixels of the batch's pixels, reached linearly from all of them by step
  # hard_example_mining_step (0: from the start). 1.0 keeps every pixel.
  config.train.top_k_percent_pixels = 1.0
  config.train.hard_example_mining_step = 0
  # A loss weight per class, () for none (all 1). Median frequency balancing for a data set:
  #   python -m deeplab_jax.class_weights --config=CONFIG
  config.train.class_weights = ()

  config.eval = ml_collections.ConfigDict()
  config.eval.split = 'val'
  config.eval.batch_size = 8           # global
  config.eval.image_size = (513, 513)  # every image is padded to this (label with ignore)
  config.eval.input_scale = 1.0        # image resized by this for the model; scored at full size
  config.eval.mode = 'whole'           # or 'sliding': windows of eval.window_size
  config.eval.scales = (1.0,)          # multi-scale: (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), averaged
  config.eval.flip = False             # add left-right flipped passes
  # How passes (scales x flips) combine: 'probabilities' (softmax averaged, as the public TF
  # DeepLab code's multi-scale evaluation) or 'logits' (averaged). One pass: the same either way.
  config.eval.average = 'probabilities'
  config.eval.window_size = ()         # sliding windows; () = data.crop_size
  config.eval.window_overlap = 1 / 3   # fraction of a window shared with its neighbour
  # Boundary F-score (Gated-SCNN's, deeplab_jax/metrics.py) at these tolerances: below 1 a
  # fraction of eval.image_size's diagonal, else pixels; () = not computed. The paper's 3, 5, 9
  # and 12 px at 1024 x 2048: (0.00131, 0.00218, 0.00393, 0.00524).
  config.eval.boundary_tolerances = ()
  config.eval.output_stride = 0        # 0 = the model's; 8 evaluates an OS16 model at OS8
  # Each image's per-class pixel counts in WORKDIR/per_image/, for launch/summarize.py's
  # bootstrap intervals over images and seeds.
  config.eval.per_image_counts = True
  config.eval.poll_seconds = 10        # eval_continuous: how often to look for checkpoints
  config.eval.wait_seconds = 3600      # eval_continuous: give up after this long without one
  config.eval.num_images_to_write = 4  # input | ground truth | prediction panels per evaluation
  # Dense CRF on the full-resolution probabilities (DeepLab v1/v2); defaults: the public
  # release's VOC setting. See deeplab_jax/postprocess/crf.py.
  config.eval.crf = ml_collections.ConfigDict(dict(
      enabled=False, w1=4.0, s_alpha=67.0, s_beta=3.0, w2=3.0, s_gamma=3.0, iterations=10))

  # Device mesh as data: axis names and sizes, -1 = the rest of the devices. The batch is
  # split over `data`; `spatial` splits the image height.
  config.mesh = (('data', -1), ('spatial', 1))
  # Locked: a config file or a --config.x=... override may set these fields but not add one,
  # so a misspelt name stops the run instead of being silently ignored. A variant that needs
  # a new field adds it here.
  config.lock()
  return config


def parse_variant(arg, allowed, path):
  """Comma-separated variant words of `configs/x.py:word,word`, each one of `allowed`."""
  words = [w for w in (arg or '').split(',') if w]
  for w in words:
    if w not in allowed:
      raise ValueError(f'{path}: unknown variant {w!r}; use a comma-separated subset of '
                       f'{sorted(allowed)} or none.')
  return set(words)


# Weight decay on every kernel but the depthwise ones (the public code's regularize_depthwise
# False for Xception and MobileNetV2).
NO_DEPTHWISE_DECAY = r'(?!.*depthwise/kernel$).*/kernel$'


def use_xception(config, name='xception65'):
  """The v3+ paper's Xception encoder-decoder: separable ASPP and decoder, weight decay 4e-5."""
  config.model.backbone.name = name
  config.model.backbone.multi_grid = (1, 1, 1)
  config.model.aspp.separable = True
  config.model.decoder.separable = True
  config.model.backbone.bn_epsilon = 1e-3  # the public code's Xception BatchNorm (head: 1e-5)
  config.optim.weight_decay = 4e-5
  config.optim.weight_decay_pattern = NO_DEPTHWISE_DECAY
  return config


def use_tf_zoo(config):
  """The network as the public TF DeepLab code builds it, so that its model-zoo checkpoints
  convert exactly (python -m deeplab_jax.convert --source=tf): Xception modules in the TF
  code's pre-activation form, corner-aligned bilinear resizes, and inputs scaled to [-1, 1]
  (x / 127.5 - 1). BatchNorm epsilon is already the TF code's (use_xception)."""
  if config.model.backbone.name.startswith('xception'):
    config.model.backbone.preactivation = True
  config.model.align_corners = True
  config.data.mean = (127.5, 127.5, 127.5)
  config.data.std = (127.5, 127.5, 127.5)
  return config


def make_smoke(config):
  """Shrinks an experiment to a tiny, shallow model that trains a step on CPU in seconds."""
  m = config.model
  m.width_multiplier = 0.125
  if m.backbone.name.startswith('resnet'):
    m.backbone.units = (1, 1, 1, len(m.backbone.multi_grid) or 1)
  elif m.backbone.name.startswith('xception'):
    m.backbone.units = (1,)
  config.data.crop_size = (65, 65)
  config.eval.image_size = (65, 65)
  config.eval.batch_size = 2
  config.train.batch_size = 2
  config.train.num_steps = 2
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_steps = 2
  config.optim.warmup_steps = 0
  return config
