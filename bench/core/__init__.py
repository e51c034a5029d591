"""The bottom layer of monobench: what tasks, SAEs and the harness share. It imports nothing else of the
project, and ``tasks/`` and ``saes/`` import only from here (``tests/test_architecture.py`` checks both).

- ``errors``: ``MonobenchError`` and the user-facing errors (one line, exit 2), ``check_finite``.
- ``registry``: the generic ``Registry`` every extension point uses (duplicates refused, unknown names listed).
- ``io``: atomic writes with one file-mode policy, ``read_json`` that names a damaged file, the cache folder.
- ``lm``: prompts as the trainers see them, generation, option log-probs, layers and hooked modules.
- ``hooks``: forward-hook capture (stop after a module, splice a function in, read one token per row).
- ``task``: the task interface (``Task``, ``TaskConfig``, ``Pair``, ``TaskData``) and its registry.
- ``preference``: pair log-probs and the DPO implicit-reward metrics.
- ``data``: the packaged sae-probes datasets; ``embed``: the packaged MiniLM encoder.
- ``stats``: t intervals, paired tests, Holm, minimum detectable effects.
- ``metrics``: ``metric(...)`` fields and ``MetricSet`` models that declare each metric where it is computed.
- ``controls``: every metric's negative and positive controls (``python -m bench validate``).
- ``compat``: the workarounds for library behaviour, version-gated, in one place.
"""
