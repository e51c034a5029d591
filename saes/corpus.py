"""A generic text mix for SAEs that are trained once per base model (issue 18: the base SAE).

Built offline from the labelled real-text datasets of the ``sae-probes`` wheel (news, reviews, questions,
code, science, tweets…), never from the files the tasks read, so no task prompt or reply is in it:

1. each listed file contributes its first ``texts_per_file`` rows in a seeded order (``bench.core.data``);
2. each text is cut to ``max_chars`` characters (the store then keeps ``context_length`` tokens of it);
3. texts are deduplicated on their whitespace-normalised first ``dedup_chars`` characters (the review
   files share rows; near-copies would sit on both sides of the split), in file order;
4. every text is its own item group, so the activation store's split by group, its prefix roles and its
   audit (``saes.heldout``) treat the corpus exactly like a task's token set.

The same corpus for every task and method of a suite: SAEs trained on it differ only by the model that
reads it. Example::

    python -c "from saes.corpus import CorpusConfig as C, build_corpus; t, p = build_corpus(C(texts_per_file=2)); \
print(len(t), p['n_duplicates'])"
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import Field, field_validator

from bench.core.data import package_version, read_embedded, seeded_order
from bench.core.errors import TaskDataError
from bench.core.settings import Settings

TASK_FILES = frozenset(
    {
        "107_hate_offensive",
        "106_hate_hate",
        "95_toxic_is",
        "102_twt_emotion",
        "148_twt_emotion_worry",
        "149_twt_emotion_happiness",
        "150_twt_emotion_sadness",
        "92_glue_sst2",
        "113_movie_sent",
        "5_hist_fig_ismale",
    }
)
"""Files the tasks (or their sources' parents) read: never in the corpus."""

DEFAULT_FILES = (
    "97_news_class",
    "161_agnews_0",
    "162_agnews_1",
    "163_agnews_2",
    "100_news_fake",
    "111_yelp_data",
    "112_amzn_rev",
    "158_code_C",
    "159_code_Python",
    "160_code_HTML",
    "55_open_qa",
    "86_social_iqa",
    "90_glue_qnli",
    "91_glue_qqp",
    "101_disease_class",
    "99_sci_cat",
    "94_ai_gen",
    "96_spam_is",
    "87_glue_cola",
    "88_glue_mnli",
    "103_it_tick",
    "105_click_bait",
    "21_headline_istrump",
)


class CorpusConfig(Settings):
    """The base SAE's text mix ([sae_base.corpus])."""

    files: tuple[str, ...] = DEFAULT_FILES
    """sae-probes dataset names (``data/cleaned_data/<name>.csv.zst``); task files are refused."""
    texts_per_file: int = Field(200, ge=1)
    """Rows taken from each file (fewer if it has fewer), in a seeded order."""
    max_chars: int = Field(600, ge=16)
    """Each text is cut to this many characters before tokenizing."""
    dedup_chars: int = Field(200, ge=16)
    """Texts whose whitespace-normalised first ``dedup_chars`` characters repeat an earlier text are dropped."""
    seed: int = Field(0, ge=0)
    """Order in which rows are drawn from each file."""

    @field_validator("files")
    @classmethod
    def _no_task_files(cls, files: tuple[str, ...]) -> tuple[str, ...]:
        if not files:
            raise ValueError("files = [] builds no corpus; list at least one sae-probes dataset")
        if clash := sorted(set(files) & TASK_FILES):
            raise ValueError(f"files {clash} are read by the tasks; a corpus must not share text with task data")
        if dup := sorted({f for f in files if files.count(f) > 1}):
            raise ValueError(f"files {dup} are listed twice")
        return files


def _norm(text: str, n: int) -> str:
    return " ".join(text.split())[:n].lower()


def build_corpus(cfg: CorpusConfig) -> tuple[list[str], dict[str, Any]]:
    """(texts, provenance): the deduplicated mix in file order; provenance counts what came from where and
    hashes the texts (the hash is what a stage keys on, with the package version)."""
    texts: list[str] = []
    seen: set[str] = set()
    per_file: dict[str, int] = {}
    dropped = 0
    for name in cfg.files:
        df = read_embedded("sae corpus", name)
        if "prompt" not in df:
            raise TaskDataError(f"sae corpus: dataset {name!r} has no 'prompt' column (has {list(df.columns)})")
        rows = df["prompt"].astype(str).tolist()
        taken = 0
        for i in seeded_order(len(rows), cfg.seed):
            if taken == cfg.texts_per_file:
                break
            text = rows[int(i)][: cfg.max_chars].strip()
            key = _norm(text, cfg.dedup_chars)
            if not key:
                continue
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            texts.append(text)
            taken += 1
        per_file[name] = taken
    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()
    return texts, {
        "source": "sae-probes",
        "sae_probes_version": package_version("sae-probes"),
        "files": per_file,
        "n_texts": len(texts),
        "n_duplicates": dropped,
        "texts_sha256": digest,
    }
