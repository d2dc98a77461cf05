"""The edge-case paper's figures as sweeps over ``launch/configs/edge_case.py``.

``figure_settings(name)`` gives a figure's settings as ``{label: overrides}``;
``get_sweep('NAME[,SEEDS]')`` crosses them with ``SEEDS`` seeds (default 3)
for ``launch.sweep`` (``launch.edge_figures`` runs the same sweeps, first
training the honest model they start from, and draws the curves).

Figures (Wang et al., NeurIPS 2020):

* ``defences`` (Figures 6 / 13): black-box, PGD and PGD with model
  replacement, and no attack, against FedAvg, NDC (bound 2), Krum,
  Multi-Krum, RFA and weak DP (NDC + sigma 0.002); the PGD radius is 1.5
  against FedAvg / NDC / DP and 1.0 against the robust rules, the
  replacement training radius 0.3 / 0.25, sent within the defence's bound;
  plus radii tuned to the ``fast`` preset's MLP, whose honest updates lie
  about 1 from the global model: PGD at 0.5 against the robust rules
  (``pgd-0.5``), PGD at the clipping bound 2 (``pgd-2``) and replacement
  training in a ball of 1 (``replacement-1``) against FedAvg, NDC and DP.
* ``frequency`` (Figure 4): fixed frequency F = 1, 2, 10, 50 and fixed
  pools of 0.5%, 1%, 5% of the clients.
* ``honest_share`` (Figure 5): the attacker holds p = 100%, 50%, 25% of the
  edge examples, honest clients the rest with their true label (``D'``
  keeps 33 edge examples; the UCI source has too few 7s for p = 10%).
* ``ratio`` (Figures 3 / 15): edge share of ``D'`` (166 examples) from 10%
  to 80%.
* ``capacity`` (Figure 10): hidden widths x 0.5, 1, 2.
* ``in_distribution``: the same attack with ordinary MNIST 7s.
* ``fairness`` (Figures 7 / 8): 30 IID honest clients, all in every round
  (the attacker takes one of the 30 slots when it attacks), one of
  them holding 66 edge 7s with their true label; a black-box attacker in
  each of 50 rounds; FedAvg vs Krum vs Multi-Krum. Records the AP ratio,
  the honest edge holder's accuracy on its 7s and who Krum selects.
"""
from launch import sweep_lib

_ROBUST = ('krum', 'multi_krum', 'rfa')
DEFENCES = {
    'fedavg': {'aggregator': 'mean'},
    'ndc': {'aggregator': 'mean', 'norm_bound': 2.0},
    'krum': {'aggregator': 'krum'},
    'multi_krum': {'aggregator': 'multi_krum'},
    'rfa': {'aggregator': 'geometric_median'},
    'weak_dp': {'aggregator': 'mean', 'norm_bound': 2.0, 'dp_sigma': 0.002},
}


def _attack(name: str, defence: str) -> dict:
  robust = defence in _ROBUST
  if name == 'none':
    return {'attack': ''}
  if name == 'blackbox':
    return {'attack': 'edge_blackbox'}
  if name == 'pgd':
    return {'attack': 'edge_pgd', 'pgd_delta': 1.0 if robust else 1.5}
  if name == 'replacement':
    send = 1.0 if robust else (2.0 if defence in ('ndc', 'weak_dp') else 0.0)
    return {'attack': 'edge_replacement', 'replacement_delta': 0.25 if robust else 0.3,
            'replacement_send_delta': send}
  raise ValueError(f'unknown attack {name!r}')


def _defences():
  out = {}
  for d, dd in DEFENCES.items():
    for a in ('none', 'blackbox', 'pgd', 'replacement'):
      out[f'{a} vs {d}'] = {**dd, **_attack(a, d)}
    # Radii tuned to the fast preset's MLP (they share the program of the paper's radii).
    if d in _ROBUST:   # inside the honest updates' median distance (about 1)
      out[f'pgd-0.5 vs {d}'] = {**dd, 'attack': 'edge_pgd', 'pgd_delta': 0.5}
    else:              # at the clipping bound; a replacement model that holds the backdoor
      out[f'pgd-2 vs {d}'] = {**dd, 'attack': 'edge_pgd', 'pgd_delta': 2.0}
      out[f'replacement-1 vs {d}'] = {**dd, **_attack('replacement', d),
                                      'replacement_delta': 1.0}
  return out


def _frequency(num_clients: int):
  out = {f'every {f} rounds': {'attack_frequency': f} for f in (1, 2, 10, 50)}
  for share in (0.005, 0.01, 0.05):
    out[f'pool {share:.1%}'] = {'attack_schedule': 'fixed_pool',
                                'num_malicious': max(1, round(share * num_clients))}
  return out


_FAIR = {'partition': 'iid', 'num_clients': 31, 'clients_per_round': 30,
         'client_pool_size': 12000, 'rounds': 50, 'eval_every': 5, 'attack_frequency': 1,
         'edge_attacker_share': 0.5, 'edge_honest_clients': 1, 'eval_ap_ratio': True}

FIGURES = {
    'defences': lambda _: _defences(),
    'frequency': _frequency,
    'honest_share': lambda _: {f'p = {int(p * 100)}%': {'edge_attacker_share': p,
                                                        'edge_num_train': 33}
                             for p in (1.0, 0.5, 0.25)},
    'ratio': lambda _: {f'{e / 166:.0%} edge': {'edge_num_train': e, 'edge_num_clean': 166 - e}
                      for e in (17, 33, 66, 100, 133)},
    'capacity': lambda _: {f'k = {k:g}': {'model_width': k} for k in (0.5, 1.0, 2.0)},
    'fairness': lambda _: {f'{a} vs {d}': {**_FAIR, **DEFENCES[d], **_attack(a, d)}
                           for d in ('fedavg', 'krum', 'multi_krum')
                           for a in ('none', 'blackbox')},
    'in_distribution': lambda _: {'edge (UCI 7s)': {'edge_source': 'uci_digits'},
                                'in-distribution (MNIST 7s)': {'edge_source': 'mnist'}},
}


def figure_settings(name: str, num_clients: int = 600) -> dict:
  """``{label: overrides}`` of the figure ``name`` (one of :data:`FIGURES`).

  ``num_clients``: the base config's, which sizes the fixed pools.
  """
  if name not in FIGURES:
    raise ValueError(f'unknown figure {name!r}; expected one of {sorted(FIGURES)}')
  return FIGURES[name](num_clients)


def with_seeds(settings: dict, seeds: int) -> tuple:
  """``(runs, labels)``: every setting with ``seed = data_seed = 0..seeds-1``."""
  if not isinstance(seeds, int) or seeds < 1:
    raise ValueError(f'seeds must be a positive int, got {seeds!r}')
  runs, labels = [], []
  for label, o in settings.items():
    for s in sweep_lib.zipped(seed=list(range(seeds)), data_seed=list(range(seeds))):
      runs.append({**o, **s})
      labels.append(label)
  return runs, labels


def get_sweep(arg: str = ''):
  name, _, seeds = arg.partition(',')
  return with_seeds(figure_settings(name or 'defences'), int(seeds or 3))[0]
