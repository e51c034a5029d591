"""Which held-out texts the harness reads: the proxies' inputs and the SAE token set (SPEC.md §4–5).

Both are the same for every method of a task, so proxies and SAEs differ only by the model that reads them.
"""

from __future__ import annotations

from bench.core.task import Pair, TaskData

PROXY_INPUTS = "heldout-prompt+chosen/last-token"
"""What the neuron proxies read (part of the proxies and train stage keys, so changing it recomputes)."""


def proxy_pairs(data: TaskData, n: int) -> list[Pair]:
    """The proxies' N held-out texts (SPEC §4): the first ``n`` held-out pairs, each read as its prompt
    (formatted as in training) followed by its chosen reply; z_i is taken at the reply's last token,
    the position DecPO regularises in training sequences. Never trained on (held-out split).
    """
    return list(data.eval_pairs[:n])


def sae_documents(data: TaskData) -> tuple[list[str], list[str]]:
    """The task's token set for SAEs and each text's item group, deduplicated in a fixed order:
    prompt + chosen and prompt + rejected of every train and held-out pair, the held-out prompts, then
    the concept texts. Texts of one item (``Pair.item``; a held-out prompt belongs to the pair it
    prompts; ``concept_items``) share a group, so the store's split keeps them on one side.

    The same texts for every method of a task, so SAEs differ only by the model that reads them.
    """
    docs: dict[str, str] = {}
    prompt_item: dict[str, str] = {}
    for p in data.train_pairs + data.eval_pairs:
        item = p.item or p.prompt
        prompt_item.setdefault(p.prompt, item)
        docs.setdefault(f"{p.prompt}\n{p.chosen}", item)
        docs.setdefault(f"{p.prompt}\n{p.rejected}", item)
    for prompt in data.eval_prompts:
        docs.setdefault(prompt, prompt_item.get(prompt, prompt))
    items = data.concept_items or list(data.concept_texts)
    for text, item in zip(data.concept_texts, items):
        docs.setdefault(text, item)
    kept = {t: g for t, g in docs.items() if t.strip()}
    return list(kept), list(kept.values())
