"""Toxicity's texts: offensive tweets cut into (prefix, toxic remainder) items, clean tweets, concept texts.

``tasks/toxicity.py`` is the task; this module only reads and filters text (and scores it with the
task's classifier).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.core.data import package_version, read_embedded, seeded_order
from tasks.sources import clean_text, load_rows, source_label

TOXIC_FILES = (("107_hate_offensive", 1), ("106_hate_hate", 1))
CLEAN_FILE = ("107_hate_offensive", 0)
CLEAN_MAX_PROB = 0.2
_TOKEN = re.compile(r"\w+|[^\w\s]")


def toxicity_probs(texts: Sequence[str]) -> np.ndarray:
    """P(toxic) per text from alt-profanity-check (``predict_prob``); float64 array of len(texts)."""
    from profanity_check import predict_prob

    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros(0)
    return np.asarray(predict_prob(texts), dtype=np.float64)


def is_degenerate(text: str) -> bool:
    """Empty (no word or punctuation token), or one token repeated: "", "!!!!", "the the the"."""
    toks = _TOKEN.findall(str(text).lower())
    return not toks or (len(toks) > 1 and len(set(toks)) == 1)


def split_half(text: str) -> tuple[str, str]:
    """(first ⌊n/2⌋ words, remaining words) of a text of n words."""
    words = text.split()
    k = len(words) // 2
    return " ".join(words[:k]), " ".join(words[k:])


def _reply(cfg, text: str, generated: bool) -> str:
    """A reply as it follows its prompt in a pair (``bench.lm`` and TRL join prompt and reply directly).

    A raw-text prompt (no chat template) ends at a word boundary, so a remainder taken from the source
    text is joined with one space; a generated reply is kept as the model wrote it (its own leading
    space, or none where it continues the prompt's last word). After a chat template no space is added.
    """
    if cfg.use_chat_template or generated or text[:1].isspace():
        return text
    return " " + text


def _embedded_items(cfg, seed: int) -> tuple[list[dict], list[str], dict]:
    """Seeded (prefix, rejected) items from offensive tweets whose remainder is toxic; clean tweets."""
    texts: list[str] = []
    for name, target in TOXIC_FILES:
        df = read_embedded("toxicity", name)
        texts += [clean_text(t) for t in df.loc[df["target"] == target, "prompt"]]
    texts = [t for t in dict.fromkeys(texts) if cfg.min_words <= len(t.split()) <= cfg.max_words]
    texts = [texts[i] for i in seeded_order(len(texts), seed)]
    halves = [split_half(t) for t in texts]
    p_rem = toxicity_probs([r for _, r in halves])
    items: list[dict[str, Any]] = []
    seen = set()
    for text, (prefix, rem), p in zip(texts, halves, p_rem):
        if p > cfg.threshold and prefix.lower() not in seen:
            seen.add(prefix.lower())
            items.append({"prefix": prefix, "rejected": rem, "chosen": None, "text": text, "id": f"tox:{len(items)}"})
    df = read_embedded("toxicity", CLEAN_FILE[0])
    clean = [clean_text(t) for t in df.loc[df["target"] == CLEAN_FILE[1], "prompt"]]
    clean = [t for t in dict.fromkeys(clean) if len(t.split()) >= 3]
    clean = [clean[i] for i in seeded_order(len(clean), seed + 1)]
    clean = [t for t, p in zip(clean, toxicity_probs(clean)) if p < CLEAN_MAX_PROB]
    prov = {
        "files": [f"sae_probes/data/cleaned_data/{n}.csv.zst (target={t}, offensive text)" for n, t in TOXIC_FILES]
        + [
            f"sae_probes/data/cleaned_data/{CLEAN_FILE[0]}.csv.zst (target={CLEAN_FILE[1]}, p<{CLEAN_MAX_PROB}; "
            "non-toxic concept texts only)"
        ],
        "package": f"sae-probes {package_version('sae-probes')}",
        "n_texts": len(texts),
        "n_texts_toxic_remainder": len(items),
    }
    return items, clean, prov


def _custom_items(cfg, seed: int) -> tuple[list[dict], dict]:
    """Items from a file / hf source: ``prompt`` (+ ``rejected``, ``chosen``); no rejected → split in half."""
    rows = load_rows("toxicity", cfg.source, cfg.columns, required=["prompt"], optional=["rejected", "chosen"])
    rows = rows.iloc[seeded_order(len(rows), seed)]
    items: list[dict[str, Any]] = []
    seen, short, dups = set(), 0, 0
    for row in rows.to_dict("records"):
        text = clean_text(row["prompt"])
        if "rejected" in row and isinstance(row["rejected"], str) and row["rejected"].strip():
            prefix, rej = text, row["rejected"].strip()
        elif len(text.split()) >= cfg.min_words:
            prefix, rej = split_half(text)
        else:
            short += 1
            continue
        chosen = row.get("chosen")
        chosen = chosen.strip() if isinstance(chosen, str) and chosen.strip() else None
        if prefix.lower() in seen:
            dups += 1
        else:
            seen.add(prefix.lower())
            items.append(
                {
                    "prefix": prefix,
                    "rejected": rej,
                    "chosen": chosen,
                    "text": f"{prefix} {rej}",
                    "id": f"tox:{len(items)}",
                }
            )
    prov = {
        "files": [source_label(cfg.source)],
        "columns": dict(cfg.columns),
        "n_rows": len(rows),
        "n_skipped_short": short,
        "n_skipped_duplicate": dups,
        "rejected_filter": "none (source rows are trusted; texts without a rejected column are split in half)",
    }
    return items, prov


def _select(items: list[dict], probs: np.ndarray, n: int, threshold: float) -> tuple[list[dict], int]:
    """First n items whose chosen is non-empty, non-toxic and not degenerate, topped up with degenerate ones."""
    ok = [it for it, p in zip(items, probs) if it["chosen"] and it["chosen"].strip() and p <= threshold]
    strict = [it for it in ok if not is_degenerate(it["chosen"])]
    relaxed = [it for it in ok if is_degenerate(it["chosen"])]
    picked = strict[:n] + relaxed[: max(0, n - len(strict))]
    order = {id(it): i for i, it in enumerate(items)}
    return sorted(picked, key=lambda it: order[id(it)]), max(0, len(picked) - len(strict[:n]))


def _concepts(
    cfg, items: list[dict], clean: list[str], pairs: list[dict], seed: int
) -> tuple[list[tuple[str, int, str]], str]:
    """Balanced (text, label, item) concept examples in seeded order, and how they were made.

    Embedded: label 1 = whole offensive tweets the classifier scores toxic, label 0 = non-toxic tweets
    of the same corpus. Other sources: label 1 = prompt + rejected, label 0 = prompt + chosen.
    """
    n = cfg.n_concept or cfg.n_train + cfg.n_eval
    if clean:
        texts = [it["text"] for it in items]
        tox = [(t, it["id"]) for t, it, p in zip(texts, items, toxicity_probs(texts)) if p > cfg.threshold]
        k = min(len(tox), len(clean), n)
        concept = [(t, 1, g) for t, g in tox[:k]] + [(t, 0, f"clean:{i}") for i, t in enumerate(clean[:k])]
        how = (
            f"label 1: offensive tweets (full text, p>{cfg.threshold}); label 0: non-toxic tweets (p<{CLEAN_MAX_PROB})"
        )
    else:
        concept = [(it["prefix"] + _reply(cfg, it["rejected"], False), 1, it["id"]) for it in pairs[:n]] + [
            (it["prefix"] + _reply(cfg, it["chosen"], it.get("generated", False)), 0, it["id"]) for it in pairs[:n]
        ]
        how = "label 1: prompt + rejected; label 0: prompt + chosen (train and eval pairs)"
    return [concept[i] for i in seeded_order(len(concept), seed + 2)], how
