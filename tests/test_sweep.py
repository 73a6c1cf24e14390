"""launch/sweep.py turns a grid into runs; launch/summarize.py turns their evals into a table."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'launch'))

import summarize  # pylint: disable=g-import-not-at-top,wrong-import-position
import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_grid_product_names_and_commands(tmp_path):
  runs = sweep.plan('configs/quickstart.py', str(tmp_path),
                    [sweep.parse_grid('model.aspp.atrous_rates=(1,1,1);(6,12,18)'),
                     sweep.parse_grid('model.output_stride=8;16')], ['--config.seed=1'])
  assert [r['name'] for r in runs] == [
      'atrous_rates-1_1_1,output_stride-8', 'atrous_rates-1_1_1,output_stride-16',
      'atrous_rates-6_12_18,output_stride-8', 'atrous_rates-6_12_18,output_stride-16']
  assert runs[2]['command'][-3:] == ['--config.model.aspp.atrous_rates=(6,12,18)',
                                     '--config.model.output_stride=8', '--config.seed=1']
  assert len({r['workdir'] for r in runs}) == 4


@pytest.mark.slow
def test_a_real_sweep_ends_in_a_table_and_a_plot(tmp_path, cache_dir, subprocess_env):
  workdir = str(tmp_path / 'sweep')
  env = subprocess_env()
  subprocess.run(
      [sys.executable, 'launch/sweep.py', '--config=configs/quickstart.py:smoke',
       f'--workdir={workdir}', '--grid=model.aspp.atrous_rates=(1,1,1);(2,4,6)', '--',
       f'--config.data.cache_dir={cache_dir}', '--config.train.num_steps=2',
       '--config.eval.num_images_to_write=0'],
      cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600)
  out = subprocess.run([sys.executable, 'launch/summarize.py', f'--sweep={workdir}'], cwd=ROOT,
                       env=env, check=True, capture_output=True, text=True).stdout
  lines = out.strip().splitlines()
  assert lines[0] == '| model.aspp.atrous_rates | step | val mIoU | pixel accuracy |'
  assert lines[2].startswith('| (1,1,1) | 2 | 0.') and lines[3].startswith('| (2,4,6) | 2 | 0.')
  for run in json.load(open(os.path.join(workdir, 'sweep.json')))['runs']:
    row = summarize.last_evaluation(run['workdir'])
    assert f'{row["miou"]:.4f}' in out
  assert open(os.path.join(workdir, 'results.md')).read().strip() == out.strip()
  assert os.path.getsize(os.path.join(workdir, 'results.png')) > 1000
  printed = subprocess.run(
      [sys.executable, 'launch/sweep.py', '--config=configs/quickstart.py:smoke',
       f'--workdir={workdir}', '--grid=model.output_stride=8;16', '--print_only'],
      cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout.splitlines()
  assert len(printed) == 2 and '--config.model.output_stride=16' in printed[1]


def test_summarize_marks_runs_not_evaluated(tmp_path):
  workdir = tmp_path / 's'
  os.makedirs(workdir / 'a')
  with open(workdir / 'a' / 'evals.jsonl', 'w') as f:
    f.write(json.dumps({'step': 5, 'split': 'val', 'protocol': 'p', 'miou': 0.5,
                        'pixel_accuracy': 0.9}) + '\n')
    f.write(json.dumps({'step': 9, 'split': 'val', 'protocol': 'q', 'miou': 0.6,
                        'pixel_accuracy': 0.91}) + '\n')
  json.dump({'config': 'c.py', 'runs': [
      {'name': 'a', 'setting': {'x': '1'}, 'workdir': str(workdir / 'a')},
      {'name': 'b', 'setting': {'x': '2'}, 'workdir': str(workdir / 'b')}]},
            open(workdir / 'sweep.json', 'w'))
  assert summarize.main([f'--sweep={workdir}', '--protocol=p']) == 0
  text = open(workdir / 'results.md').read()
  assert '| 1 | 5 | 0.5000 | 0.9000 |' in text and '| 2 | not evaluated |  |  |' in text


def test_runs_and_per_class_tables_read_the_last_step(tmp_path, capsys):
  rows = [
      {'step': 10, 'split': 'dev', 'protocol': 'p', 'miou': 0.1, 'pixel_accuracy': 0.5,
       'per_class_iou': {'a': 0.1, 'b': 0.1}, 'confusion': [[1, 0], [0, 1]]},
      {'step': 20, 'split': 'dev', 'protocol': 'p', 'miou': 0.25, 'pixel_accuracy': 0.75,
       'per_class_iou': {'a': 0.5, 'b': None}, 'confusion': [[30, 10], [0, 0]]},
      {'step': 20, 'split': 'val', 'protocol': 'p ema=0.9', 'miou': 0.5, 'pixel_accuracy': 0.9,
       'per_class_iou': {'a': 0.8, 'b': 0.2}, 'confusion': [[8, 1], [1, 2]]},
  ]
  workdir = tmp_path / 'run'
  os.makedirs(workdir)
  with open(workdir / 'evals.jsonl', 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in rows))
  assert summarize.main([f'--runs={workdir},{tmp_path / "none"}']) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[2:] == [f'| {workdir} | 20 | dev | p | 0.2500 | 0.7500 |',
                     f'| {workdir} | 20 | val | p ema=0.9 | 0.5000 | 0.9000 |',
                     f'| {tmp_path / "none"} | not evaluated | | | | |']
  assert summarize.main([f'--per_class={workdir}']) == 0
  out = capsys.readouterr().out
  # Pixels are the ground truth's: the confusion matrix's row sums (40 and 0; 9 and 3).
  assert '| a | 0.500 | 40 |\n| b | n/a | 0 |' in out
  assert '| a | 0.800 | 9 |\n| b | 0.200 | 3 |' in out
  assert summarize.main([]) == 2


def test_seeds_table_gives_mean_and_sample_sd(tmp_path, capsys):
  rng = np.random.default_rng(0)
  ious = rng.uniform(0, 1, (3, 2))
  ious[1, 1] = np.nan                        # a class run 1 never saw nor predicted
  workdirs = []
  for seed in range(3):
    workdir = tmp_path / f's{seed}'
    os.makedirs(workdir)
    per_class = {c: None if np.isnan(ious[seed, i]) else ious[seed, i]
                 for i, c in enumerate(('a', 'b'))}
    rows = [{'step': 5, 'split': 'dev', 'protocol': 'p', 'miou': 0.0, 'pixel_accuracy': 0.0,
             'per_class_iou': per_class, 'confusion': [[0, 0], [0, 0]]},
            {'step': 9, 'split': 'dev', 'protocol': 'p', 'miou': float(np.nanmean(ious[seed])),
             'pixel_accuracy': 0.5, 'per_class_iou': per_class, 'confusion': [[6, 1], [2, 3]],
             'boundary_f_2px': 0.1 * (seed + 1), 'per_class_boundary_f_2px': per_class}]
    if seed == 0:                            # a protocol the other runs lack is left out
      rows.append(dict(rows[-1], protocol='p ema=0.9'))
    with open(workdir / 'evals.jsonl', 'w') as f:
      f.write(''.join(json.dumps(r) + '\n' for r in rows))
    workdirs.append(str(workdir))
  assert summarize.main([f'--seeds={",".join(workdirs)}']) == 0
  out = capsys.readouterr().out
  mious = np.nanmean(ious, axis=1)
  assert ('dev, p, 3 runs (steps 9, 9, 9): mIoU '
          f'{mious.mean():.4f} sd {mious.std(ddof=1):.4f}') in out
  assert 'boundary_f_2px: 0.2000 sd 0.1000 (0.1000, 0.2000, 0.3000)' in out
  assert 'per_class_boundary_f' not in out
  assert f'| a | {ious[:, 0].mean():.3f} | {ious[:, 0].std(ddof=1):.3f} | 7 |' in out
  b = ious[[0, 2], 1]
  assert f'| b | {b.mean():.3f} | {b.std(ddof=1):.3f} | 5 |' in out
  assert 'ema' not in out
  assert summarize.main([f'--seeds={workdirs[0]},{tmp_path / "none"}']) == 0
  assert 'not evaluated' in capsys.readouterr().out
