"""How task-specific a layer's most-changed neurons' top tokens are: the metric behind claim C6 (Table 1).

For a job's task, a vocabulary token w is **task-specific** when its smoothed log-odds of appearing in the task's
training texts (prompt + chosen + rejected of every training pair) against the generic corpus
(``saes.corpus``, which shares no file with the tasks) exceeds log 4:

    lo(w) = log((c_T(w) + ½) / (N_T + ½V)) − log((c_C(w) + ½) / (N_C + ½V)),   c = token counts, N = totals,
    V = vocabulary size.

``top_tokens_task_share`` at a layer = share of the top tokens of its most-changed neurons (the neurons stage's
``top_tokens_by_depth.json``: 10 neurons × 8 tokens, read through the down projection and the unembedding) that
are task-specific. C6 ("deeper layers' top tokens are task-specific") is tested as early − late layers of it
(claimed negative), paired over (task, seed). It is computed at report time from stored records, so a
folder whose weights are not present can be scored. Chance level: the task-specific share of the vocabulary
(``vocab_share``), for neurons whose tokens are unrelated to the task; a depth contrast of random tokens is 0.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pandas as pd

from bench.core.controls import control
from bench.core.io import read_json
from bench.core.metrics import MetricSet, metric, register_metrics

THRESHOLD = math.log(4.0)
METRIC = "top_tokens_task_share"


@register_metrics
class TaskShareMetrics(MetricSet):
    """Computed by the report from the neurons stage's records (metrics.csv of the report's claims only)."""

    group, where, per_layer = "report", "bench.paper.specificity.task_share_records", True
    top_tokens_task_share: float | None = metric(
        "share of the top tokens of a layer's 10 most-changed MLP neurons that are task-specific (log-odds > log 4 "
        "in the task's training texts against the generic corpus)",
        better="none",
        unit="fraction",
    )


def log_odds(task_counts: Counter, corpus_counts: Counter, vocab: int) -> dict[int, float]:
    """lo(w) for every token id seen in either text set (unseen ids have lo = 0)."""
    nt, nc = sum(task_counts.values()), sum(corpus_counts.values())
    out = {}
    for w in set(task_counts) | set(corpus_counts):
        pt = (task_counts[w] + 0.5) / (nt + 0.5 * vocab)
        pc = (corpus_counts[w] + 0.5) / (nc + 0.5 * vocab)
        out[w] = math.log(pt) - math.log(pc)
    return out


def specific_strings(lo: dict[int, float], decode: dict[int, str]) -> set[str]:
    """Decoded strings of the task-specific token ids (a top-token list holds decoded strings)."""
    return {decode[w] for w, v in lo.items() if v > THRESHOLD and w in decode}


def share(tokens: Iterable[str], specific: set[str]) -> float:
    toks = list(tokens)
    return float(np.mean([t in specific for t in toks])) if toks else math.nan


@functools.cache
def _tokenizer_and_corpus(model_id: str):
    from bench.models import load_tokenizer
    from saes.corpus import CorpusConfig, build_corpus

    tok = load_tokenizer(model_id)
    texts, _ = build_corpus(CorpusConfig())
    corpus = Counter(t for ids in tok(texts, add_special_tokens=False)["input_ids"] for t in ids)
    decode = {i: tok.decode([i]) for i in range(len(tok))}
    return tok, corpus, decode


def _tokenizer_spec(res, model_id: str) -> str:
    """The tokenizer a job's model uses: a tiny model's is named in the suite's [model.tiny] table."""
    if not model_id.startswith("tiny:"):
        return model_id
    tiny = ((res.manifest.get("suite_config") or {}).get("model") or {}).get("tiny") or {}
    return tiny.get("tokenizer", "embedded:smollm2-135m-instruct")


def _task_counts(tok, data: dict) -> Counter:
    texts = [f"{p['prompt']}\n{p['chosen']}\n{p['rejected']}" for p in data.get("train_pairs", [])]
    return Counter(t for ids in tok(texts, add_special_tokens=False)["input_ids"] for t in ids)


def task_share_records(res) -> pd.DataFrame:
    """Tidy rows (model, task, method, seed, layer, metric, value) of ``top_tokens_task_share`` for every job
    whose neurons stage wrote ``top_tokens_by_depth.json`` (empty when none did or no tokenizer is at hand)."""
    rows = []
    specific_of: dict[tuple[str, str], set[str]] = {}
    for job in res.jobs:
        st = job.get("stages", {})
        top = res.dir / "runs" / str(st.get("neurons")) / "top_tokens_by_depth.json"
        data = res.dir / "runs" / str(st.get("data")) / "data.json"
        if not (top.is_file() and data.is_file()):
            continue
        key = (job["model"], st["data"])
        if key not in specific_of:
            tok, corpus, decode = _tokenizer_and_corpus(_tokenizer_spec(res, job["model"]))
            specific_of[key] = specific_strings(log_odds(_task_counts(tok, read_json(data)), corpus, len(tok)), decode)
        by_layer: dict[int, list[str]] = {}
        for r in read_json(top):
            by_layer.setdefault(int(r["layer"]), []).extend(r["tokens"])
        for layer, toks in by_layer.items():
            rows.append(
                {
                    "model": job["model"],
                    "task": job["task"],
                    "method": job["method"],
                    "seed": job["seed"],
                    "layer": layer,
                    "sae": np.nan,
                    "metric": METRIC,
                    "value": share(toks, specific_of[key]),
                }
            )
    return pd.DataFrame(rows)


# ----- controls (``python -m bench validate``) ---------------------------------------------------------
def _vocab(ctx) -> tuple[list[str], set[str]]:
    rng = ctx.rng(91)
    vocab = [f"w{i}" for i in range(2000)]
    return vocab, set(rng.choice(vocab, 100, replace=False).tolist())


def _random_contrast_rate(ctx) -> float:
    """Share of 400 draws whose early − late share of random tokens (80 each) is beyond ±2 binomial SEs."""
    vocab, specific = _vocab(ctx)
    rng, p = ctx.rng(92), len(specific) / len(vocab)
    se = math.sqrt(2 * p * (1 - p) / 80)
    hits = [
        abs(share(rng.choice(vocab, 80), specific) - share(rng.choice(vocab, 80), specific)) > 1.96 * se
        for _ in range(400)
    ]
    return float(np.mean(hits))


def _planted(ctx) -> float:
    vocab, specific = _vocab(ctx)
    return share(list(specific)[:80], specific)


def _register_controls() -> None:
    control(
        METRIC,
        "negative",
        "random vocabulary tokens at two depths: |early − late| beyond its 95 % binomial band",
        expect="rate ≤ 0.08 (nominal 0.05)",
        check=lambda v: v <= 0.08,
    )(_random_contrast_rate)
    control(METRIC, "positive", "top tokens that are all task-specific", expect="= 1", check=lambda v: v == 1.0)(
        _planted
    )


_register_controls()
