"""The paper (Yan et al. 2024, arXiv 2406.17969), claim by claim, from a results folder's stored tables.

- ``bench.paper.figures``: Figs. 3–7 as the paper draws them (per-layer proxy change after DPO,
  decorrelation by depth for both read-outs, decorrelation and reward margin over training, activation
  variance DecPO − DPO).
- ``bench.paper.tables``: Table 1 (top tokens of the most changed MLP neurons at three depths) and
  Table 2 (alignment of every method, ours with CIs beside the paper's published values, SPEC §7).
- ``bench.paper.claims``: the claims checklist (C1–C6) with paired effects, Holm-adjusted across the
  checklist, and computed verdicts (``claims.csv``).
"""
