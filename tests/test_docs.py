"""README.md and docs/*.md stay honest: short, undated, and naming only what exists.

Every `configs/NAME.py[:variant]`, `python -m deeplab_jax.X`, repository path and relative link
named in README.md or docs/*.md exists (a variant builds, a module prints its usage for --help),
README links the docs pages, and README's model table is what `python -m deeplab_jax.summary
--table` prints for its rows.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

from deeplab_jax import summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
README_MAX_LINES = 250
README_LINKS = ('docs/models.md', 'docs/data.md', 'docs/evaluation.md', 'docs/weights.md',
                'docs/scaling.md', 'benchmarks/RESULTS.md')

# `configs/NAME.py` and `configs/NAME.py:variant,variant`, not inside a longer path; a name
# in capitals (`configs/NAME.py`) is a placeholder.
CONFIG_RE = re.compile(r'(?<![\w./-])configs/([a-z][a-z0-9_]*)\.py(?::([A-Za-z0-9_,]+))?')
MODULE_RE = re.compile(r'python3?\s+-m\s+((?:deeplab_jax|benchmarks|launch)(?:\.\w+)+)')
# A repository path: benchmarks/X, launch/X, docs/X, tests/X, deeplab_jax/X (configs above).
PATH_RE = re.compile(r'(?<![\w./-])((?:benchmarks|launch|docs|tests|deeplab_jax)/[\w./*-]+)')
LINK_RE = re.compile(r'\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
# What README must not hold: dates (a paper's year alone is fine), commit hashes, machines.
DATE_RES = (re.compile(r'\b20\d\d-\d\d-\d\d\b'), re.compile(r'\b20\d\d-(?:0[1-9]|1[0-2])\b(?!-\d)'))
HASH_RE = re.compile(r'(?<![\w.-])(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}(?![\w-])')
MACHINE_RES = (re.compile(r'\bXeon\b', re.I), re.compile(r'\bEPYC\b', re.I),
               re.compile(r'\bAMD\b'), re.compile(r'\bZen\b'), re.compile(r'\bCPU-[BC]\b'),
               re.compile(r'\bslow hour', re.I))


def doc_files(root=ROOT):
  return [os.path.join(root, 'README.md')] + sorted(glob.glob(os.path.join(root, 'docs', '*.md')))


def _read(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


def _rel(path):
  return os.path.relpath(path, ROOT)


def named_configs(paths):
  """{(config name, variant or None): [files naming it]}."""
  found = {}
  for path in paths:
    for m in CONFIG_RE.finditer(_read(path)):
      variant = m.group(2).strip(',') if m.group(2) else None
      found.setdefault((m.group(1), variant or None), []).append(_rel(path))
  return found


def _named(paths, regex):
  """{regex's first group, trailing dot dropped: [files naming it]}."""
  found = {}
  for path in paths:
    for m in regex.finditer(_read(path)):
      found.setdefault(m.group(1).rstrip('.'), []).append(_rel(path))
  return found


def named_modules(paths):
  """{'deeplab_jax.main': [files naming it], ...} from `python -m X` commands."""
  return _named(paths, MODULE_RE)


def module_file(module, root=ROOT):
  """The file `python -m module` runs, or None."""
  base = os.path.join(root, *module.split('.'))
  for candidate in (base + '.py', os.path.join(base, '__main__.py')):
    if os.path.isfile(candidate):
      return candidate
  return None


def named_paths(paths):
  """{repository path: [files naming it]} for benchmarks/, launch/, docs/, tests/, deeplab_jax/."""
  return _named(paths, PATH_RE)


def links(path):
  """The relative link targets of a Markdown file, anchors dropped, as repository paths."""
  targets = []
  # Code (fenced blocks, `spans`) holds no links: `signatures['serving_default'](images=...)`.
  prose = re.sub(r'`[^`\n]*`', '', re.sub(r'^```.*?^```', '', _read(path), flags=re.M | re.S))
  for m in LINK_RE.finditer(prose):
    target = m.group(1)
    if re.match(r'[a-z][a-z0-9+.-]*:', target, re.I) or target.startswith('#'):
      continue  # http(s):, mailto:, an anchor in the same page
    target = target.split('#', 1)[0].split('?', 1)[0]
    targets.append(_rel(os.path.normpath(os.path.join(os.path.dirname(path), target))))
  return targets


def model_table(path):
  """README's model table: [(line number, config spec, {header: cell})] for the rows whose first
  cell names a config, in a table whose header has a params and a multiply-adds column."""
  rows, header = [], None
  for number, line in enumerate(_read(path).splitlines(), 1):
    line = line.strip()
    if not line.startswith('|'):
      header = None
      continue
    cells = [c.strip() for c in line.strip('|').split('|')]
    if header is None:
      lowered = [c.lower() for c in cells]
      if any('params' in c for c in lowered) and any('multiply-adds' in c for c in lowered):
        header = cells
      else:
        header = []  # another table: skip to its end
      continue
    if not header or all(re.fullmatch(r':?-+:?', c) for c in cells if c):
      continue
    m = CONFIG_RE.search(cells[0])
    if m:
      rows.append((number, m.group(0).rstrip(','), dict(zip(header[1:], cells[1:]))))
  return rows


def check_short_and_undated(path):
  lines = _read(path).splitlines()
  problems = []
  if len(lines) > README_MAX_LINES:
    problems.append(f'{len(lines)} lines, over {README_MAX_LINES}')
  for number, line in enumerate(lines, 1):
    for regex in DATE_RES:
      problems += [f'line {number}: a date {m.group()!r}' for m in regex.finditer(line)]
    problems += [f'line {number}: a commit hash {m.group()!r}' for m in HASH_RE.finditer(line)]
    for regex in MACHINE_RES:
      problems += [f'line {number}: a machine narrative {m.group()!r} (benchmarks/RESULTS.md '
                   'holds those)' for m in regex.finditer(line)]
  assert not problems, f'{_rel(path)}:\n  ' + '\n  '.join(problems)


def test_readme_is_short_and_undated():
  check_short_and_undated(README)


def test_the_undated_checks_flag_what_they_should():
  assert [m.group() for m in HASH_RE.finditer(
      'commit 3f9c2ab, a decade faced 1234567 deadbeef 1e-4 v3plus 0.6101 dbc17ba.')] == [
          '3f9c2ab', 'dbc17ba']
  assert any(r.search('measured 2026-12-07') for r in DATE_RES)
  assert any(r.search('in 2025-03') for r in DATE_RES)
  assert not any(r.search('Chen et al., 2017; 2016-2018; 480 x 480') for r in DATE_RES)
  assert MACHINE_RES[2].search('on the AMD machine') and not MACHINE_RES[2].search('amd64')


def check_named_things_exist(files):
  problems = []
  for (name, variant), where in sorted(named_configs(files).items(), key=str):
    spec = f'configs/{name}.py' + (f':{variant}' if variant else '')
    source = os.path.join(ROOT, 'configs', f'{name}.py')
    if not os.path.isfile(source):
      problems.append(f'{spec} (in {where[0]}) does not exist')
    elif variant and not re.search(r'^def get_config\b', _read(source), re.M):
      # A file without get_config (configs/common.py): `:name` names one of its functions.
      if not re.search(rf'^def {variant}\b', _read(source), re.M):
        problems.append(f'{spec} (in {where[0]}): no function {variant} in configs/{name}.py')
    elif variant:
      try:
        summary.load_config(spec)
      except Exception as e:  # pylint: disable=broad-except
        problems.append(f'{spec} (in {where[0]}) does not build: {type(e).__name__}: {e}')
  for module, where in sorted(named_modules(files).items()):
    if module_file(module) is None:
      problems.append(f'python -m {module} (in {where[0]}): no such module file')
  for path, where in sorted(named_paths(files).items()):
    if not (glob.glob(os.path.join(ROOT, path)) if '*' in path
            else os.path.exists(os.path.join(ROOT, path))):
      problems.append(f'{path} (in {where[0]}) does not exist')
  for path in files:
    for target in sorted(set(links(path))):
      if not os.path.exists(os.path.join(ROOT, target)):
        problems.append(f'{_rel(path)}: the link to {target} leads nowhere')
  assert not problems, '\n  '.join(['README.md and docs/*.md name what does not exist:'] + problems)


def test_named_configs_modules_and_paths_exist():
  check_named_things_exist(doc_files())


def check_links_the_docs_pages(path):
  linked = set(links(path))
  missing = [p for p in README_LINKS if os.path.normpath(p) not in linked]
  assert not missing, f'{_rel(path)} has no Markdown link to {missing}'


def test_readme_links_the_docs_pages():
  check_links_the_docs_pages(README)


# The deeplab_jax modules README and docs tell a reader to run, collected once at import.
HELP_MODULES = sorted(m for m in named_modules(doc_files()) if m.startswith('deeplab_jax.'))


def test_readme_and_docs_name_modules():
  assert 'deeplab_jax.main' in HELP_MODULES, (
      'README.md and docs/*.md name no `python -m deeplab_jax.main`: the module scan found '
      f'{HELP_MODULES}')


@pytest.mark.parametrize('module', HELP_MODULES)
def test_module_prints_its_usage(module):
  if module_file(module) is None:
    pytest.fail(f'python -m {module}: no such module file')
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  out = subprocess.run([sys.executable, '-m', module, '--help'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  # absl exits 1 after --help in some versions, argparse 0.
  assert out.returncode in (0, 1), (out.returncode, out.stderr[-3000:])
  assert 'Traceback' not in out.stderr, out.stderr[-3000:]
  assert '--' in out.stdout + out.stderr, (out.stdout[-2000:], out.stderr[-2000:])


def check_model_table(path):
  """Every row of the model table in `path` against `deeplab_jax.summary`'s table_row."""
  rows = model_table(path)
  assert rows, (f'{_rel(path)} has no model table: a Markdown table whose header has "params" '
                'and "multiply-adds" columns and whose rows start with a configs/NAME.py[:variant] '
                'cell (`python -m deeplab_jax.summary --table` prints one)')
  problems = []
  for number, spec, cells in rows:
    want = summary.table_row(spec)
    for header, cell in cells.items():
      # params and multiply-adds by the words in their header; other columns of the same
      # name as summary's (backbone, context, OS, crop) as well.
      column = ('params' if 'params' in header.lower() else
                'multiply-adds' if 'multiply-adds' in header.lower() else header)
      if column not in want:
        continue
      if cell.strip('`') != want[column].strip('`'):
        problems.append(f'line {number} ({spec}): {header} {cell!r}, summary gives '
                        f'{want[column]!r}')
  assert not problems, '\n  '.join(
      [f'{_rel(path)}: the model table differs from `python -m deeplab_jax.summary --table`:']
      + problems)


@pytest.mark.slow
def test_readme_model_table_matches_summary():
  check_model_table(README)


def test_the_model_table_check_catches_a_wrong_figure(tmp_path):
  def readme(name, table):
    path = tmp_path / name
    path.write_text(f'# Title\n\nText.\n\n{table}\n\nMore text.\n| a | b |\n|---|---|\n')
    return str(path)

  with pytest.raises(AssertionError, match='has no model table'):
    check_model_table(readme('none.md', ''))
  right = summary.table_row('configs/quickstart.py')
  check_model_table(readme('right.md', summary.format_table([right])))
  # The smoke variant's row with the full quickstart's figures.
  wrong = dict(right, config='`configs/quickstart.py:smoke`')
  with pytest.raises(AssertionError, match=r"quickstart.py:smoke\): params '1.6 M', summary"):
    check_model_table(readme('wrong.md', summary.format_table([wrong])))
