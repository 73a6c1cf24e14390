"""Cityscapes, VOC (+ SBD), ADE20K and folder readers on real files; bad pairs named or skipped."""

import logging
import os
import zipfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from configs import common
from deeplab_jax import data
from deeplab_jax.data import ade20k
from deeplab_jax.data import cityscapes
from deeplab_jax.data import voc
from deeplab_jax.errors import UserError

FRAME = 'frankfurt_000000_000294'


def data_config(name, root, cache, **overrides):
  config = common.get_base_config().data
  config.name, config.root, config.cache_dir = name, str(root), str(cache)
  config.update(overrides)
  return config


def examples(dataset, split):
  """{name: (image, label [H, W])} of a prepared split."""
  source = dataset.builder.as_data_source(split)
  out = {}
  for i in range(len(source)):
    ex = source[i]
    name = ex['name'].decode() if isinstance(ex['name'], bytes) else ex['name']
    out[name] = (ex['image'], ex['label'][..., 0])
  return out


def png(path):
  with Image.open(path) as im:
    return np.asarray(im)


# Cityscapes.

@pytest.fixture(scope='module')
def city_root(fixtures_root):
  return os.path.join(fixtures_root, 'cityscapes')


@pytest.fixture(scope='module')
def city_dataset(city_root, tmp_path_factory):
  return data.get_dataset(data_config('cityscapes', city_root, tmp_path_factory.mktemp('cache')))


def test_cityscapes_label_ids_map_to_the_released_train_ids(city_dataset, city_root):
  assert city_dataset.num_classes == 19 and city_dataset.ignore_label == 255
  assert city_dataset.class_names[0] == 'road' and city_dataset.class_names[18] == 'bicycle'
  assert sorted(city_dataset.builder.info.splits) == ['val']
  image, label = examples(city_dataset, 'val')[FRAME]
  gt = os.path.join(city_root, 'gtFine', 'val', 'frankfurt', FRAME + '_gtFine_')
  assert image.shape == (128, 256, 3) and label.shape == (128, 256)
  np.testing.assert_array_equal(label, cityscapes.label_map().table[png(gt + 'labelIds.png')])
  # The fixture's labelTrainIds PNG was downsampled apart from its labelIds PNG, so the two
  # differ on 77 boundary pixels: they must agree exactly wherever the 5 x 5 neighbourhood
  # of labelIds holds one id, and elsewhere the released train id must occur in it.
  released = png(gt + 'labelTrainIds.png').astype(np.int32)
  windows = np.lib.stride_tricks.sliding_window_view(
      np.pad(label.astype(np.int32), 2, mode='edge'), (5, 5))
  interior = (windows == label[..., None, None]).all(axis=(2, 3))
  np.testing.assert_array_equal(label[interior], released[interior])
  assert interior.mean() > 0.7 and (label == released).mean() > 0.997
  assert (windows == released[..., None, None]).any(axis=(2, 3)).all()
  np.testing.assert_array_equal(
      image, png(os.path.join(city_root, 'leftImg8bit', 'val', 'frankfurt',
                              FRAME + '_leftImg8bit.png')))
  # The whole table, as in cityscapesScripts labels.py.
  table = cityscapes.label_map().table
  expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
              25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
  assert {i: int(table[i]) for i in range(34)} == {i: expected.get(i, 255) for i in range(34)}


def test_cityscapes_from_the_official_zips_matches_the_folders(city_dataset, city_root, tmp_path):
  root = tmp_path / 'zips'
  root.mkdir()
  with zipfile.ZipFile(root / cityscapes.IMAGE_ZIP, 'w') as z:
    z.writestr('README', 'not an image')
    z.write(os.path.join(city_root, 'leftImg8bit', 'val', 'frankfurt', FRAME + '_leftImg8bit.png'),
            f'leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png')
    # A test image: its split has no labels in the label zip, so it is left out.
    z.write(os.path.join(city_root, 'leftImg8bit', 'val', 'frankfurt', FRAME + '_leftImg8bit.png'),
            'leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png')
  with zipfile.ZipFile(root / cityscapes.LABEL_ZIP, 'w') as z:
    for kind in ('labelIds', 'labelTrainIds', 'instanceIds'):
      z.write(os.path.join(city_root, 'gtFine', 'val', 'frankfurt', f'{FRAME}_gtFine_{kind}.png'),
              f'gtFine/val/frankfurt/{FRAME}_gtFine_{kind}.png')
  zipped = data.get_dataset(data_config('cityscapes', root, tmp_path / 'cache'))
  assert sorted(zipped.builder.info.splits) == ['val']
  a, b = examples(city_dataset, 'val')[FRAME], examples(zipped, 'val')[FRAME]
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not any(p.name.endswith('.png') for p in root.rglob('*'))  # nothing was extracted


def test_cityscapes_needs_a_root(tmp_path):
  with pytest.raises(UserError, match="data.name='cityscapes' needs data.root: the folder with"):
    data.get_dataset(data_config('cityscapes', '', tmp_path))


# PASCAL VOC and SBD.

def test_voc_palette_labels_are_indices_with_255_kept(fixtures_root, tmp_path):
  dataset = data.get_dataset(data_config('voc', fixtures_root, tmp_path))
  assert dataset.num_classes == 21 and dataset.class_names[15] == 'person'
  assert dataset.colors[1] == (128, 0, 0) and dataset.colors[15] == (192, 128, 128)
  splits = {s: dataset.num_examples(s) for s in dataset.builder.info.splits}
  assert splits == {'train': 2, 'val': 1, 'trainval': 3}
  voc_dir = os.path.join(fixtures_root, 'VOCdevkit', 'VOC2012')
  for name, (image, label) in examples(dataset, 'trainval').items():
    expected = png(os.path.join(voc_dir, 'SegmentationClass', name + '.png'))  # palette indices
    np.testing.assert_array_equal(label, expected)
    assert image.shape == expected.shape + (3,)
  _, label = examples(dataset, 'train')['2011_000006']
  assert set(np.unique(label)) == {0, 9, 15, 18, 255}


def save_sbd(path, label):
  scipy.io.savemat(path, {'GTcls': {'Segmentation': label.astype(np.uint8),
                                    'Boundaries': np.zeros((21, 1), object),
                                    'CategoriesPresent': np.unique(label)}})


def test_train_aug_merges_sbd_without_voc_val(fixtures_root, tmp_path):
  root = tmp_path / 'voc'
  root.mkdir()
  os.symlink(os.path.join(fixtures_root, 'VOCdevkit'), root / 'VOCdevkit')  # read in place
  sbd = root / 'benchmark_RELEASE' / 'dataset'
  (sbd / 'img').mkdir(parents=True)
  (sbd / 'cls').mkdir()
  # VOC train: 2011_000003, 2011_000006; VOC val: 2011_000025.
  (sbd / 'train.txt').write_text('2011_000003\n2011_000025\nsbd_a\n')
  (sbd / 'val.txt').write_text('sbd_b\nsbd_a\n')
  rng = np.random.default_rng(0)
  sbd_labels = {}
  for i, (h, w) in {'2011_000003': (338, 500), '2011_000025': (375, 500), 'sbd_a': (20, 30),
                    'sbd_b': (24, 16)}.items():
    sbd_labels[i] = rng.integers(0, 21, (h, w))
    save_sbd(sbd / 'cls' / f'{i}.mat', sbd_labels[i])
  for i in ('sbd_a', 'sbd_b'):
    Image.fromarray(rng.integers(0, 255, (*sbd_labels[i].shape, 3), dtype=np.uint8)).save(
        sbd / 'img' / f'{i}.jpg')
  dataset = data.get_dataset(data_config('voc', root, tmp_path / 'cache'))
  train_aug = examples(dataset, voc.TRAIN_AUG)
  assert sorted(train_aug) == ['2011_000003', '2011_000006', 'sbd_a', 'sbd_b']
  voc_labels = os.path.join(fixtures_root, 'VOCdevkit', 'VOC2012', 'SegmentationClass')
  np.testing.assert_array_equal(train_aug['2011_000003'][1],
                                png(os.path.join(voc_labels, '2011_000003.png')))  # VOC's own
  for i in ('sbd_a', 'sbd_b'):
    np.testing.assert_array_equal(train_aug[i][1], sbd_labels[i])
    assert train_aug[i][0].shape == sbd_labels[i].shape + (3,)
  assert dataset.num_examples('val') == 1
  # A broken .mat is named.
  (sbd / 'cls' / 'sbd_b.mat').write_bytes(b'MATLAB 5.0 MAT-file, truncated')
  with pytest.raises(UserError, match=r'sbd_b.mat: cannot read GTcls.Segmentation'):
    data.get_dataset(data_config('voc', root, tmp_path / 'cache'))


# ADE20K.

def test_ade20k_other_is_ignored_and_classes_shift_down(fixtures_root, tmp_path):
  ade_dir = os.path.join(fixtures_root, 'ADEChallengeData2016')
  dataset = data.get_dataset(data_config('ade20k', ade_dir, tmp_path))
  names = ade20k.read_class_names(os.path.join(ade_dir, 'objectInfo150.txt'))
  assert len(names) == 150 and names[:3] == ('wall', 'building', 'sky') and names[-1] == 'flag'
  assert dataset.class_names == names == ade20k.CLASS_NAMES
  assert dataset.num_classes == data.DATASETS['ade20k'].num_classes == 150
  assert dataset.ignore_label == 255 and len(dataset.colors) == 150
  val = examples(dataset, 'val')
  assert sorted(val) == ['ADE_val_00000001', 'ADE_val_00000002', 'ADE_val_00000003']
  for name, (image, label) in val.items():
    raw = png(os.path.join(ade_dir, 'annotations', 'validation', name + '.png'))
    assert image.shape == raw.shape + (3,)
    np.testing.assert_array_equal(label, np.where(raw == 0, 255, raw.astype(np.int32) - 1))
  assert 96 in np.unique(val['ADE_val_00000003'][1])  # stored 97 is class 96


# Your own folder.

def make_folder(root, pairs, classes=None):
  """Writes images/<split>/<name>.png and labels/<split>/<name>.png from {(split, name): label}."""
  rng = np.random.default_rng(1)
  for (split, name), label in pairs.items():
    for kind in ('images', 'labels'):
      os.makedirs(os.path.dirname(os.path.join(root, kind, split, name)), exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*label.shape, 3), dtype=np.uint8)).save(
        os.path.join(root, 'images', split, name + ('.jpg' if 'jpg' in name else '.png')))
    Image.fromarray(label.astype(np.uint8)).save(os.path.join(root, 'labels', split, name + '.png'))
  if classes is not None:
    with open(os.path.join(root, 'classes.txt'), 'w') as f:
      f.write(classes)
  return str(root)


def label(value, shape=(12, 16), ignore=255):
  out = np.full(shape, value, np.uint8)
  out[0, 0] = ignore
  return out


def test_folder_with_classes_txt(tmp_path):
  root = make_folder(tmp_path / 'd', {
      ('train', 'a'): label(0), ('train', 'city/b'): label(2), ('val', 'deep/er/c'): label(1)},
      classes='sky\nroad 128 64 128\n\nsign post 220 220 0\n')
  config = data_config('folder', root, tmp_path / 'cache')
  dataset = data.get_dataset(config)
  assert dataset.class_names == ('sky', 'road', 'sign post') and dataset.ignore_label == 255
  assert dataset.colors[1:] == ((128, 64, 128), (220, 220, 0))
  assert data.num_classes(config) == 3 and data.DATASETS['folder'].num_classes == 0
  train = examples(dataset, 'train')
  assert sorted(train) == ['a', 'city/b'] and sorted(examples(dataset, 'val')) == ['deep/er/c']
  np.testing.assert_array_equal(train['city/b'][1], label(2))
  # A value beyond classes.txt is neither a class nor ignored.
  make_folder(tmp_path / 'd', {('val', 'deep/er/c'): label(3)})
  with pytest.raises(UserError, match=r'labels/val/deep/er/c.png: label value 3 is neither a '
                                      r'class \(0..2\) nor the ignore label 255'):
    data.get_dataset(config)


def test_folder_without_classes_txt_counts_label_values(tmp_path):
  root = make_folder(tmp_path / 'd', {('train', 'a'): label(4, ignore=250),
                                      ('train', 'b_jpg'): label(1, ignore=250)})
  config = data_config('folder', root, tmp_path / 'cache', ignore_label=250)
  dataset = data.get_dataset(config)
  assert dataset.class_names == tuple(f'class_{k}' for k in range(5))
  assert dataset.ignore_label == 250 and data.num_classes(config) == 5
  np.testing.assert_array_equal(examples(dataset, 'train')['b_jpg'][1], label(1, ignore=250))
  config.ignore_label = 255  # 250 is a class now; another key, so prepared again
  dataset = data.get_dataset(config)
  assert dataset.num_classes == 251 and dataset.ignore_label == 255
  config.ignore_label = 4
  with pytest.raises(UserError, match=r'data.ignore_label=4 is one of the 251 classes'):
    data.get_dataset(config)


# Bad data: stops with the file named, or is skipped and counted.

def truncate(path):
  with open(path, 'rb') as f:
    head = f.read(80)
  with open(path, 'wb') as f:
    f.write(head)


def _write(path, content):
  with open(path, 'wb') as f:
    f.write(content)


# case: (spoil(root, stem) of the pair train/<stem>, the error's pattern with {stem}).
BAD_CASES = {
    'corrupt image': (lambda r, s: _write(os.path.join(r, 'images', 'train', s + '.png'),
                                          b'not an image'),
                      r'images/train/{stem}.png: cannot decode image'),
    'truncated image': (lambda r, s: truncate(os.path.join(r, 'images', 'train', s + '.png')),
                        r'images/train/{stem}.png: cannot decode image'),
    'label size': (lambda r, s: Image.fromarray(np.zeros((5, 5), np.uint8)).save(
        os.path.join(r, 'labels', 'train', s + '.png')),
                   r'labels/train/{stem}.png: label size \(5, 5\) differs from image size '
                   r'\(12, 16\)'),
    'label value': (lambda r, s: Image.fromarray(label(7)).save(
        os.path.join(r, 'labels', 'train', s + '.png')),
                    r'labels/train/{stem}.png: label value 7 is neither a class \(0..2\) nor '
                    r'the ignore label 255'),
    'missing label': (lambda r, s: os.remove(os.path.join(r, 'labels', 'train', s + '.png')),
                      r'labels/train/{stem}.png: listed in .* but not found'),
}


def good_folder(root, stems='abc'):
  pairs = {('train', s): label(i % 3) for i, s in enumerate(stems)}
  pairs[('val', 'v')] = label(1)
  return make_folder(root, pairs, classes='x\ny\nz\n')


@pytest.mark.parametrize('case', sorted(BAD_CASES))
def test_bad_pair_stops_with_the_file_named(tmp_path, case):
  root = good_folder(tmp_path / 'd')
  spoil, message = BAD_CASES[case]
  spoil(root, 'b')
  with pytest.raises(UserError, match=message.format(stem='b')) as e:
    data.get_dataset(data_config('folder', root, tmp_path / 'cache'))
  assert '\n' not in str(e.value)


def test_empty_split_stops_with_the_split_named(tmp_path):
  root = good_folder(tmp_path / 'd')
  os.makedirs(os.path.join(root, 'images', 'test'))
  with pytest.raises(UserError, match=r"images: split 'test' has no examples"):
    data.get_dataset(data_config('folder', root, tmp_path / 'cache'))


def test_bad_pairs_are_skipped_and_counted(tmp_path, caplog):
  bad = [f'bad{i}' for i in range(len(BAD_CASES))]
  root = good_folder(tmp_path / 'd', stems=['a', 'b', 'c'] + bad)
  for stem, case in zip(bad, sorted(BAD_CASES)):
    BAD_CASES[case][0](root, stem)
  os.makedirs(os.path.join(root, 'images', 'test'))  # an empty split
  config = data_config('folder', root, tmp_path / 'cache', skip_bad_examples=True)
  with caplog.at_level(logging.WARNING):
    dataset = data.get_dataset(config)
  assert sorted(dataset.builder.info.splits) == ['train', 'val']
  assert sorted(examples(dataset, 'train')) == ['a', 'b', 'c']
  assert f"Skipped {len(bad)} bad pairs of split 'train'" in caplog.text
  assert 'bad0.png' in caplog.text and 'bad2.png' in caplog.text  # the first few are named
  assert "split 'test' has no examples; left out" in caplog.text
  # The copy prepared with skipping is not reused without it.
  config.skip_bad_examples = False
  with pytest.raises(UserError, match=r'train/bad\d.png'):
    data.get_dataset(config)


def test_skip_setting_keys_the_prepared_copy(tmp_path):
  root = good_folder(tmp_path / 'd')
  config = data_config('folder', root, tmp_path / 'cache')
  plain = data.get_dataset(config)
  config.skip_bad_examples = True
  skipping = data.get_dataset(config)
  assert plain.builder.data_dir != skipping.builder.data_dir
  # A pair spoiled later: the copy with skipping is prepared again and leaves it out.
  BAD_CASES['label value'][0](root, 'b')
  assert data.get_dataset(config).num_examples('train') == 2
