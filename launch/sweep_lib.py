"""Sweeps as data: small helpers to build lists of config overrides."""
import difflib
import hashlib
import importlib.util
import itertools
import json
import os

import numpy as np


def product(**axes):
  """All combinations: ``product(a=[1, 2], b=['x'])`` -> 2 override dicts."""
  keys = list(axes)
  return [dict(zip(keys, vals)) for vals in itertools.product(*axes.values())]


def zipped(**axes):
  """Element-wise: ``zipped(a=[1, 2], b=[3, 4])`` -> ``[{a:1,b:3}, {a:2,b:4}]``."""
  lengths = {k: len(v) for k, v in axes.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f'zipped axes must have equal lengths, got {lengths}')
  return [dict(zip(axes, vals)) for vals in zip(*axes.values())]


SEED_KEYS = ('seed', 'data_seed', 'malicious_seed')


def apply_overrides(base, overrides):
  """A copy of the ConfigDict ``base`` with ``overrides`` set.

  Raises:
    ValueError: an override is not a key of ``base`` (the message names it and
      the closest keys), or its value does not fit the key's type.
  """
  cfg = base.copy_and_resolve_references()
  for k, v in overrides.items():
    if k not in cfg:
      close = difflib.get_close_matches(k, list(cfg.keys()), n=3)
      hint = f'; did you mean {close}?' if close else ''
      raise ValueError(f'sweep override {k!r} (= {v!r}) is not a config key{hint}')
    try:
      cfg[k] = v
    except (TypeError, ValueError) as e:
      raise ValueError(f'sweep override {k}={v!r} does not fit the config: {e}') from e
  return cfg


def setting_name(overrides) -> str:
  """The run name without its seeds: the runs of one setting differ only in seed."""
  return run_name({k: v for k, v in overrides.items() if k not in SEED_KEYS})


def summarize(results, metric: str):
  """Mean and spread over seeds of ``metric``, per setting.

  Args:
    results: dicts with ``overrides`` and ``final`` (``sweep_results.jsonl``).
    metric: a key of ``final``.

  Returns:
    ``{setting: {'mean', 'std', 'min', 'max', 'n'}}`` in first-seen order
    (``std`` is the population standard deviation; runs lacking the metric
    are left out).
  """
  values = {}
  for r in results:
    v = r['final'].get(metric)
    if v is None:
      continue
    values.setdefault(setting_name(r['overrides']), []).append(float(v))
  out = {}
  for name, vs in values.items():
    a = np.asarray(vs)
    out[name] = {'mean': float(a.mean()), 'std': float(a.std()), 'min': float(a.min()),
                 'max': float(a.max()), 'n': int(a.size)}
  return out


def run_name(overrides) -> str:
  return ','.join(f'{k}={v}' for k, v in sorted(overrides.items())) or 'base'


def load_sweep(spec: str):
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_sweep(arg)


def plan(base, runs):
  """``(configs, names, groups)`` of a sweep; checks every override first."""
  from fl_jax.simulation import batch  # pylint: disable=g-import-not-at-top
  configs = [apply_overrides(base, o).to_dict() for o in runs]
  names = [run_name(o) for o in runs]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise ValueError(f'the sweep repeats the runs {dupes}')
  return configs, names, batch.group_runs(configs)


def group_dirname(g, names) -> str:
  """``group<g>-<hash of its run names>``: a changed sweep never resumes a stale batch."""
  return f'group{g}-' + hashlib.sha1('\n'.join(names).encode()).hexdigest()[:8]


def write_results(workdir, runs, names, group_of, summaries, metric):
  """``sweep_results.jsonl``, ``sweep_summary.json`` and the summary plot."""
  results = [{'run': n, 'group': group_of[i], 'overrides': o, 'final': summaries[i]}
             for i, (n, o) in enumerate(zip(names, runs))]
  table = summarize(results, metric)
  from fl_jax.simulation import distributed  # pylint: disable=g-import-not-at-top
  if not distributed.is_main_process():  # several processes: process 0 writes
    return results, table
  with open(os.path.join(workdir, 'sweep_results.jsonl'), 'w') as f:
    for r in results:
      f.write(json.dumps(r) + '\n')
  with open(os.path.join(workdir, 'sweep_summary.json'), 'w') as f:
    json.dump({'metric': metric, 'settings': table}, f, indent=2)
  if table:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    labels = list(table)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) + 2), 3.6))
    means = [table[k]['mean'] for k in labels]
    err = [[table[k]['mean'] - table[k]['min'] for k in labels],
           [table[k]['max'] - table[k]['mean'] for k in labels]]
    ax.bar(range(len(labels)), means, yerr=err, capsize=4, color='#4c72b0')
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha='right', fontsize=8)
    ax.set_ylabel(f'final {metric}')
    ax.set_title(f'mean over seeds, bars: min-max (n = {table[labels[0]]["n"]})', fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, 'sweep_summary.png'), dpi=120)
    plt.close(fig)
  return results, table


def run_sweep(base, runs, workdir, *, vectorize: bool = True, resume: bool = False,
              block_evals: int = 4, metric: str = 'test_accuracy', dry_run: bool = False,
              devices: int = 1, runs_chunk: int = 0, log=print):
  """Runs the override dicts ``runs`` on the config ``base``; writes the results.

  Runs that share a program (:func:`fl_jax.simulation.batch.group_runs`) run as
  one vectorized batch (``vectorize``), else one after another with
  ``train.train``. Each run writes to ``workdir/<run name>``; then
  :func:`write_results`. ``devices > 1`` splits each group's runs over a
  ``'runs'`` mesh of that many devices (``-1``: all); a group whose size does
  not divide over them is an error naming both. ``runs_chunk`` runs of a group
  are vmapped together, the chunks mapped over (``0``: by backend, see
  :func:`fl_jax.simulation.batch.default_runs_chunk`).

  Returns:
    ``(names, workdirs, summaries, table)``; the last two are None with
    ``dry_run`` (which only prints the groups).
  """
  from fl_jax.simulation import batch  # pylint: disable=g-import-not-at-top
  from fl_jax.simulation import train  # pylint: disable=g-import-not-at-top
  configs, names, groups = plan(base, runs)
  group_of = {}
  for g, idx in enumerate(groups):
    for i in idx:
      group_of[i] = g
    traced = [k for k in batch.varying_keys([configs[i] for i in idx])
              if k in batch.TRACED_KEYS]
    log(f'group {g}: {len(idx)} run(s) in one program'
        + (f', traced per run: {", ".join(traced)}' if traced else ''))
    for i in idx:
      log(f'  {names[i]}')
  workdirs = [os.path.join(workdir, n) for n in names]
  if dry_run:
    return names, workdirs, None, None
  os.makedirs(workdir, exist_ok=True)
  mesh = None
  if vectorize and devices != 1:
    mesh = batch.runs_mesh(None if devices == -1 else devices)
    log(f'runs split over {mesh.size} {mesh.devices.flat[0].platform} devices')
  summaries = [None] * len(configs)
  for g, idx in enumerate(groups):
    if vectorize:
      out = batch.run_batch([configs[i] for i in idx], [workdirs[i] for i in idx],
                            batch_dir=os.path.join(workdir, '_batches',
                                                   group_dirname(g, [names[i] for i in idx])),
                            resume=resume, evals_per_block=block_evals, name=f'group {g}',
                            mesh=mesh, runs_chunk=runs_chunk or None, log=log)
      for i, s in zip(idx, out):
        summaries[i] = s
    else:
      for i in idx:
        log(f'== {workdirs[i]}')
        summaries[i] = train.train(configs[i], workdirs[i], resume=resume)
  _, table = write_results(workdir, runs, names, group_of, summaries, metric)
  return names, workdirs, summaries, table
