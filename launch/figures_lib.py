"""Per-round curves of a sweep's runs: CSV, summary table and plot (no flags)."""
import csv
import json
import os
from typing import Sequence

import numpy as np

CURVE_METRICS = ('target_accuracy', 'test_accuracy', 'honest_edge_accuracy', 'ap_ratio')
_YLABELS = {'target_accuracy': 'target-task accuracy', 'test_accuracy': 'main-task accuracy',
            'honest_edge_accuracy': "honest clients' edge accuracy", 'ap_ratio': 'AP ratio'}


def read_curves(workdir: str) -> list:
  """The evaluations of one run (``metrics.jsonl``), as dicts."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: the run did not write its metrics')
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_rounds(workdir: str) -> list:
  """The per-round records of one run (``rounds.jsonl``; empty if none)."""
  path = os.path.join(workdir, 'rounds.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_curves(path: str, figure: str, labels: Sequence[str], runs: Sequence[dict],
                 workdirs: Sequence[str]) -> list:
  """One CSV row per (run, evaluation): figure, setting, seed, round, metrics."""
  rows = []
  for label, o, w in zip(labels, runs, workdirs):
    for rec in read_curves(w):
      rows.append({'figure': figure, 'setting': label, 'seed': o.get('seed', 0),
                   'round': rec['round'],
                   **{m: rec[m] for m in CURVE_METRICS if m in rec}})
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=['figure', 'setting', 'seed', 'round', *CURVE_METRICS],
                       restval='')
    w.writeheader()
    w.writerows(rows)
  return rows


def _by_setting(rows, metric):
  """``{setting: (rounds[T], values[seeds, T])}`` of the rows with ``metric``."""
  out = {}
  for label in dict.fromkeys(r['setting'] for r in rows):
    mine = [r for r in rows if r['setting'] == label and r.get(metric, '') != '']
    if not mine:
      continue
    seeds = sorted({r['seed'] for r in mine})
    rounds = sorted({r['round'] for r in mine})
    vals = np.full((len(seeds), len(rounds)), np.nan)
    for r in mine:
      vals[seeds.index(r['seed']), rounds.index(r['round'])] = r[metric]
    out[label] = (np.asarray(rounds), vals)
  return out


def summary(rows) -> list:
  """Per setting: final and peak target accuracy, final test accuracy (mean, min, max)."""
  table = []
  tgt, acc = _by_setting(rows, 'target_accuracy'), _by_setting(rows, 'test_accuracy')
  for label, (_, v) in acc.items():
    row = {'setting': label, 'seeds': v.shape[0],
           'test_acc_final': float(np.nanmean(v[:, -1])),
           'test_acc_final_min': float(np.nanmin(v[:, -1])),
           'test_acc_final_max': float(np.nanmax(v[:, -1]))}
    if label in tgt:
      t = tgt[label][1]
      row.update(target_acc_final=float(np.nanmean(t[:, -1])),
                 target_acc_final_min=float(np.nanmin(t[:, -1])),
                 target_acc_final_max=float(np.nanmax(t[:, -1])),
                 target_acc_peak=float(np.nanmean(np.nanmax(t, axis=1))))
    table.append(row)
  return table


def markdown(table) -> str:
  lines = ['| setting | target acc (final) | target acc (peak) | main-task acc (final) |',
           '|---|---|---|---|']
  for r in table:
    t = (f"{r['target_acc_final']:.3f} [{r['target_acc_final_min']:.3f}, "
         f"{r['target_acc_final_max']:.3f}]" if 'target_acc_final' in r else '-')
    peak = f"{r['target_acc_peak']:.3f}" if 'target_acc_peak' in r else '-'
    lines.append(f"| {r['setting']} | {t} | {peak} | {r['test_acc_final']:.4f} "
                 f"[{r['test_acc_final_min']:.4f}, {r['test_acc_final_max']:.4f}] |")
  return '\n'.join(lines)


def plot(path: str, rows, title: str, panels: int = 0,
         metrics=('target_accuracy', 'test_accuracy')) -> None:
  """``metrics`` per round (one row of subplots each): mean over seeds, band = min-max.

  ``panels > 0`` splits the settings over that many columns of subplots by
  their label's last word (e.g. the defence of ``'pgd vs krum'``).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  series_of = {m: _by_setting(rows, m) for m in metrics}
  acc = _by_setting(rows, 'test_accuracy')
  groups = {'': list(acc)}
  if panels:
    groups = {}
    for label in acc:
      groups.setdefault(label.split(' ')[-1], []).append(label)
  cols = len(groups)
  fig, axes = plt.subplots(len(metrics), cols, figsize=(3.4 * cols + 1, 3 * len(metrics)),
                           squeeze=False, sharey='row')
  for c, (gname, labels) in enumerate(groups.items()):
    for r, m in enumerate(metrics):
      series, ylab = series_of[m], _YLABELS.get(m, m)
      ax = axes[r, c]
      for label in labels:
        if label not in series:
          continue
        x, v = series[label]
        short = label.rsplit(' vs ', 1)[0] if panels else label
        line, = ax.plot(x, np.nanmean(v, 0), label=short, lw=1.4)
        ax.fill_between(x, np.nanmin(v, 0), np.nanmax(v, 0), color=line.get_color(),
                        alpha=0.2, lw=0)
      if r == 0 and gname:
        ax.set_title(gname, fontsize=10)
      ax.set_xlabel('FL round')
      if c == 0:
        ax.set_ylabel(ylab)
      ax.grid(alpha=0.3)
  for ax in axes[0] if panels else axes[0, :1]:
    ax.legend(fontsize=6, loc='upper left')
  n = max(v.shape[0] for _, v in acc.values()) if acc else 0
  fig.suptitle(f'{title} (mean of {n} seeds, band: min-max)', fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
