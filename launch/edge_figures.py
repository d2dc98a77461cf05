r"""The edge-case paper's figures, each from one command.

Each figure is a sweep of ``launch/sweeps/edge_case.py`` over the config
``--config`` (default ``launch/configs/edge_case.py:fast``), crossed with
``--seeds`` seeds and run through the vectorized sweep engine
(:func:`launch.sweep_lib.run_sweep`). Before it, the honest FedAvg model the
runs start from is trained for ``pretrain_rounds`` rounds, once per model
(cached in ``<workdir>/_pretrain``). Examples::

  python -m launch.edge_figures --figure=defences        # Figures 6 / 13
  python -m launch.edge_figures --figure=frequency       # Figure 4
  python -m launch.edge_figures --figure=honest_share    # Figure 5
  python -m launch.edge_figures --figure=ratio           # Figures 3 / 15
  python -m launch.edge_figures --figure=capacity        # Figure 10
  python -m launch.edge_figures --figure=in_distribution
  python -m launch.edge_figures --figure=density         # Figure 2
  python -m launch.edge_figures --figure=defences --config=launch/configs/edge_case.py:smoke \
      --seeds=1 --workdir=/tmp/edge_smoke

Writes, in ``<workdir>/<figure>/``:

* ``curves.csv`` -- one row per (run, evaluation): setting, seed, round,
  ``target_accuracy`` (the backdoor's success on the edge test set),
  ``test_accuracy`` (main task);
* ``curves.png`` -- both per round, mean over seeds with a min-max band;
* ``summary.csv`` / ``summary.md`` -- final and peak target accuracy and
  final main-task accuracy per setting;
* each run's workdir (``config.json``, ``metrics.jsonl``, ``rounds.jsonl``,
  ``summary.json``, ``checkpoint.npz``) as ``launch.sweep`` writes them.

``--figure=density`` (Figure 2) writes ``density.csv`` and ``density.png``:
the log density of MNIST test images and of the edge set under class
Gaussians fitted on the pre-trained model's penultimate features.
"""
import csv
import json
import os
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from fl_jax.metrics.writer import to_jsonable
from launch import figures_lib
from launch import sweep_lib
from launch.sweeps import edge_case as figures

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'edge_case.py') + ':fast'
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Base config.')
_FIGURE = flags.DEFINE_enum('figure', 'defences', [*figures.FIGURES, 'density'],
                            'Which figure.')
_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/edge_figures', 'Parent output folder.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds per setting.')
_RESUME = flags.DEFINE_bool('resume', False, 'Continue a killed figure from its checkpoints.')
_VECTORIZE = flags.DEFINE_bool('vectorize', True, 'Seeds of a setting as one program.')


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def pretrain(base, overrides, workdir: str) -> str:
  """Trains (or reuses) the honest model of ``overrides``' model; returns its workdir."""
  from fl_jax.simulation import train  # pylint: disable=g-import-not-at-top
  model = {k: overrides.get(k, base[k]) for k in ('model', 'model_width')}
  rounds = base.pretrain_rounds
  cfg = sweep_lib.apply_overrides(base, {
      **model, 'attack': '', 'rounds': rounds, 'eval_every': max(1, rounds // 4),
      'checkpoint_every': rounds, 'edge_attacker_share': 1.0, 'init_checkpoint': ''})
  out = os.path.join(workdir, '_pretrain', f"{model['model']}_w{model['model_width']:g}")
  summary = os.path.join(out, 'summary.json')
  if os.path.exists(summary):  # reuse it if it was trained with this very config
    with open(os.path.join(out, 'config.json')) as f:
      same = json.load(f) == json.loads(json.dumps(to_jsonable(cfg.to_dict())))
    with open(summary) as f:
      if same and json.load(f).get('rounds') == rounds:
        return out
  _log(f'pre-training {model} for {rounds} honest FedAvg rounds -> {out}')
  s = train.train(cfg, out, resume=True, log=_log)
  _log(f"pre-trained: test accuracy {s['test_accuracy']:.4f}")
  return out


def run_figure(base, name: str, seeds: int, workdir: str, *, resume=False, vectorize=True):
  """Runs the figure ``name``; returns its summary table (see the module docstring)."""
  t0 = time.time()
  runs, labels = figures.with_seeds(figures.figure_settings(name, base.num_clients), seeds)
  fig_dir = os.path.join(workdir, name)
  os.makedirs(fig_dir, exist_ok=True)
  # One sweep per pre-trained model (the capacity figure has several).
  by_model = {}
  for i, o in enumerate(runs):
    by_model.setdefault((o.get('model', base.model),
                         o.get('model_width', base.model_width)), []).append(i)
  workdirs = [None] * len(runs)
  for key, idx in by_model.items():
    init = pretrain(base, runs[idx[0]], workdir)
    sub = sweep_lib.apply_overrides(base, {'init_checkpoint': init})
    out_dir = fig_dir if len(by_model) == 1 else os.path.join(
        fig_dir, f'{key[0]}_w{key[1]:g}')
    _, wds, _, _ = sweep_lib.run_sweep(sub, [runs[i] for i in idx], out_dir,
                                       vectorize=vectorize, resume=resume,
                                       metric='target_accuracy', log=_log)
    for i, w in zip(idx, wds):
      workdirs[i] = w
  rows = figures_lib.write_curves(os.path.join(fig_dir, 'curves.csv'), name, labels, runs,
                                  workdirs)
  table = figures_lib.summary(rows)
  with open(os.path.join(fig_dir, 'summary.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=sorted({k for r in table for k in r}), restval='')
    w.writeheader()
    w.writerows(table)
  md = figures_lib.markdown(table)
  wall = time.time() - t0
  with open(os.path.join(fig_dir, 'summary.md'), 'w') as f:
    f.write(f'# {name}: {len(runs)} runs, {wall:.0f} s\n\n{md}\n')
  metrics = ('target_accuracy', 'test_accuracy')
  if name == 'fairness':
    metrics += ('honest_edge_accuracy', 'ap_ratio')
    selection_figure(fig_dir, labels, runs, workdirs, base)
  figures_lib.plot(os.path.join(fig_dir, 'curves.png'), rows,
                   f'edge-case backdoor: {name}', panels=int(name == 'defences'),
                   metrics=metrics)
  _log(f'{name}: {len(runs)} runs in {wall:.0f} s; {fig_dir}/curves.png')
  print(md, flush=True)
  return table


def selection_figure(fig_dir, labels, runs, workdirs, base):
  """Figure 7: how often Krum / Multi-Krum select each client (``selection.csv`` / png).

  Per run, the share of the rounds a client was sampled in that the rule
  selected it; the csv has one row per (run, client) with its role (the
  honest client holding the edge examples, the attacker, or another honest
  client), the plot the mean rate per role over seeds.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fl_jax import metrics  # pylint: disable=g-import-not-at-top
  from fl_jax.simulation import train  # pylint: disable=g-import-not-at-top
  roles = ('edge holder', 'attacker', 'other honest')
  table, out = {}, []
  for label, o, w in zip(labels, runs, workdirs):
    rows = figures_lib.read_rounds(w)
    if not rows or 'selected' not in rows[0]:
      continue
    cfg = sweep_lib.apply_overrides(base, o).to_dict()
    holder = int(np.bincount(train.load_data(cfg).edge.honest_clients).argmax())
    attacker = int(np.flatnonzero(train.malicious_mask(cfg))[0])
    ids = np.asarray([r['client_ids'] for r in rows])
    sel = np.asarray([r['selected'] for r in rows], bool)
    k = cfg['num_clients']
    rate = np.asarray(metrics.selection_counts(sel, ids, k)) / np.maximum(
        np.bincount(ids.ravel(), minlength=k), 1)
    role = np.full(k, roles[2], object)
    role[holder], role[attacker] = roles[0], roles[1]
    out += [[label, o.get('seed', 0), c, float(rate[c]), role[c]] for c in range(k)]
    table.setdefault(label, []).append([float(rate[holder]), float(rate[attacker]),
                                        float(np.mean(rate[role == roles[2]]))])
  if not table:
    return
  with open(os.path.join(fig_dir, 'selection.csv'), 'w', newline='') as f:
    wr = csv.writer(f)
    wr.writerow(['setting', 'seed', 'client', 'selection_rate', 'role'])
    wr.writerows(out)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.5, 3.4))
  width = 0.8 / len(table)
  for n, (label, vals) in enumerate(table.items()):
    v = np.asarray(vals)
    ax.bar(np.arange(3) + n * width, v.mean(0), width,
           yerr=[v.mean(0) - v.min(0), v.max(0) - v.mean(0)], capsize=3, label=label)
  ax.set_xticks(np.arange(3) + 0.4 - width / 2)
  ax.set_xticklabels(roles)
  ax.set_ylabel('selected / sampled')
  ax.legend(fontsize=8)
  ax.set_title(f'who the rule selects (mean over {v.shape[0]} seeds, bars: min-max)',
               fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(fig_dir, 'selection.png'), dpi=110)
  plt.close(fig)


def density_figure(base, workdir: str):
  """Figure 2: log density of MNIST test vs the edge set under the pre-trained model."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fl_jax import attacks  # pylint: disable=g-import-not-at-top
  from fl_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from fl_jax.simulation import train  # pylint: disable=g-import-not-at-top
  init = pretrain(base, {}, workdir)
  model, params, _ = train.restore(init)
  train_ds = data_lib.load_dataset('mnist', 'train')
  test_ds = data_lib.load_dataset('mnist', 'test')
  rng = np.random.default_rng(0)
  fit = rng.choice(train_ds.y.size, 10000, replace=False)
  gmm = attacks.fit_class_gaussians_on(model.features, params, train_ds.x[fit],
                                       train_ds.y[fit], 10, covariance_type='full')
  sets = {'MNIST test': test_ds.x,
          f'MNIST test {base.edge_digit}s': test_ds.x[test_ds.y == base.edge_digit]}
  src = base.edge_source if base.edge_source != 'mnist' else 'uci_digits'
  edge = data_lib.load_edge_source(src, data_dir=base.edge_dir or None, digit=base.edge_digit)
  sets[f'{src} {base.edge_digit}s (edge set)'] = np.concatenate([edge.train_x, edge.test_x])
  logp = {k: attacks.log_density(gmm, attacks.compute_features(model.features, params, x))
          for k, x in sets.items()}
  out = os.path.join(workdir, 'density')
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'density.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['set', 'log_density'])
    for k, v in logp.items():
      w.writerows([k, float(x)] for x in v)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 3.6))
  lo = min(np.percentile(v, 0.5) for v in logp.values())
  hi = max(np.percentile(v, 99.5) for v in logp.values())
  bins = np.linspace(lo, hi, 60)
  for k, v in logp.items():
    ax.hist(np.clip(v, lo, hi), bins=bins, density=True, alpha=0.5, label=k)
  ax.set_xlabel('log density of penultimate features (class Gaussians)')
  ax.set_ylabel('share of images')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'density.png'), dpi=110)
  plt.close(fig)
  p5 = np.percentile(logp['MNIST test'], 5)
  same = logp[f'MNIST test {base.edge_digit}s']
  lines = ['| set | n | median log density | share below MNIST test 5th percentile | '
           f'P(log density < that of a random MNIST test {base.edge_digit}) |',
           '|---|---|---|---|---|']
  for k, v in logp.items():
    # The rank statistic (AUROC): 0.5 = no separation from MNIST's own digits.
    below = np.mean(v[:, None] < same[None, :]) + 0.5 * np.mean(v[:, None] == same[None, :])
    lines.append(f'| {k} | {v.size} | {np.median(v):.1f} | {np.mean(v < p5):.3f} | '
                 f'{below:.3f} |')
  md = '\n'.join(lines)
  with open(os.path.join(out, 'density.md'), 'w') as f:
    f.write(md + '\n')
  print(md, flush=True)
  return logp


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _FIGURE.value == 'density':
    density_figure(_CONFIG.value, _WORKDIR.value)
  else:
    run_figure(_CONFIG.value, _FIGURE.value, _SEEDS.value, _WORKDIR.value,
               resume=_RESUME.value, vectorize=_VECTORIZE.value)


if __name__ == '__main__':
  app.run(main)
