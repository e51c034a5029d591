"""Performance benchmarks, outside the library: ``python -m bench perf`` runs ``benchmarks.perf``.

Each benchmark times monobench against a peer side by side in one process (ratios, never absolute
budgets in tests): ``perf`` (the runner and table), ``sae`` (the SAE pipeline vs SAELens), ``timing``
(sizes, alternation, rows).
"""
