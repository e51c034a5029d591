"""Language-model helpers shared by tasks, training, proxies and SAEs.

- ``format_prompt``: chat template when the tokenizer has one, plain text otherwise.
- ``generate``: batched, left-padded, greedy (or sampled) continuations; returns only the new text.
- ``option_logprobs``: Σ_t log p(option_t | prompt, option_<t) for K options per prompt, the prompt
  run once (held-out preference pairs, sycophancy's options).
- ``decoder_layers`` / ``hook_module``: find the blocks and the MLP input projection (``mlp.up_proj``
  for Llama-style models, ``mlp.c_fc`` for GPT-2-style) by probing the module tree, PEFT wrappers
  included, so no per-model table is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import torch
from torch import nn

from bench.core.errors import ConfigError


def format_prompt(tokenizer, prompt: str, use_chat_template: bool = True) -> str:
    """The text the model sees before its reply: chat template (with generation prompt) if available."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


def training_prompt(tokenizer, prompt: str, use_chat_template: bool = True) -> str:
    """The prompt text a trainer receives: ``format_prompt``, minus a leading BOS that the tokenizer adds
    itself when it tokenizes (so the sequence holds one BOS, not two)."""
    text = format_prompt(tokenizer, prompt, use_chat_template)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        ids = tokenizer("x")["input_ids"]
        if ids and ids[0] == tokenizer.bos_token_id:
            return text[len(bos) :]
    return text


def training_ids(tokenizer, prompt: str, reply: str, use_chat_template: bool = True) -> list[int]:
    """Token ids of the training sequence of (prompt, reply): ``tokenizer(text=training_prompt + reply + eos)``.

    This is what TRL 1.x's ``DPOTrainer`` (and ``CPOTrainer``/``SFTTrainer``) tokenizes for a
    non-conversational example: the EOS token's text is appended to the reply and prompt + reply is
    tokenized as one string (``tests/test_align.py`` compares it with TRL's own collator). Its last
    id is the EOS token: the position the DecPO/L1 penalty reads and the proxies read (``readout``).
    """
    return list(
        tokenizer(text=training_prompt(tokenizer, prompt, use_chat_template) + reply + tokenizer.eos_token)["input_ids"]
    )


READOUT = "eos-after-reply"
"""Where a sequence is read (penalty, proxies, curves): the EOS token TRL appends after the reply, i.e.
the last non-padding token of a training sequence. Part of the train and proxies stage keys."""


def _unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model of a PEFT wrapper (or the model itself)."""
    if hasattr(model, "get_base_model"):
        return cast(Callable[[], nn.Module], model.get_base_model)()
    return model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks (Llama: model.layers, GPT-2: transformer.h)."""
    base = _unwrap(model)
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = base
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ConfigError(
        f"cannot find the decoder layers of {type(base).__name__}; supported: Llama-style "
        "(model.layers), GPT-2-style (transformer.h), GPT-NeoX"
    )


def n_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def resolve_layer(layer: int | float, total: int) -> int:
    """An int is a layer index (negative counts from the end); a float in [0, 1) is a fraction of depth."""
    if isinstance(layer, float):
        if not 0.0 <= layer < 1.0:
            raise ConfigError(f"layer fraction {layer} must be in [0, 1)")
        return int(layer * total)
    idx = layer + total if layer < 0 else layer
    if not 0 <= idx < total:
        raise ConfigError(f"layer {layer} out of range for a model with {total} layers")
    return idx


def hook_module(model: nn.Module, layer: int, hook: str = "mlp.up_proj") -> nn.Module:
    """Module ``hook`` (dotted path inside block ``layer``); ``mlp.up_proj`` falls back to ``mlp.c_fc``."""
    block = decoder_layers(model)[layer]
    candidates = [hook] + (["mlp.c_fc"] if hook == "mlp.up_proj" else [])
    for cand in candidates:
        obj = block
        try:
            for part in cand.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise ConfigError(f"layer {layer} of {type(_unwrap(model)).__name__} has no module {hook!r}")


def right_padded(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token-id rows, right-padded with ``pad_id`` to the longest."""
    width = max(1, max(map(len, rows)))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last non-padding token, for right *or* left padding.

    i_b = max{t : mask[b, t] = 1}. Rows with no tokens are an error.
    """
    if (attention_mask.sum(1) == 0).any():
        raise ValueError("a sequence in the batch has no tokens (all padding)")
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.bool() * (positions + 1)).argmax(1)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 20,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    num_return_sequences: int = 1,
    use_chat_template: bool = True,
    max_prompt_tokens: int = 256,
    seed: int | None = None,
    progress: bool = False,
    lstrip: bool = True,
) -> list[str]:
    """Continuations of ``prompts`` (new text only, special tokens removed, whitespace stripped), in order.

    With ``num_return_sequences`` = K > 1 the result has K entries per prompt, consecutively.
    ``lstrip=False`` keeps the leading whitespace the model wrote: a raw-text continuation then joins
    its prompt exactly as generated (" next words", or "s" when it continues the prompt's last word).
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    out: list[str] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the caller's RNG is kept
        if seed is not None:
            torch.manual_seed(seed)
        for start in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress, leave=False):
            texts = [format_prompt(tokenizer, p, use_chat_template) for p in prompts[start : start + batch_size]]
            enc = tokenizer(
                texts,
                return_tensors="pt",
                padding=True,
                padding_side="left",  # per call: the tokenizer's own setting is not touched
                truncation=True,
                max_length=max_prompt_tokens,
                add_special_tokens=False,
            ).to(device)
            kw = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_p=top_p)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_return_sequences,
                pad_token_id=tokenizer.pad_token_id,
                **kw,
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(
                t.strip() if lstrip else t.rstrip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)
            )
    return out


@torch.no_grad()
def option_logprobs(
    model,
    tokenizer,
    prompts: Sequence[str],
    options: Sequence[Sequence[str]],
    *,
    batch_size: int = 16,
    use_chat_template: bool = True,
    max_length: int = 384,
) -> np.ndarray:
    """log π(o_ij | x_i) = Σ_t log p(o_ij,t | x_i, o_ij,<t) for K options per prompt → (n, K) float64, nats.

    The option follows the chat-formatted prompt directly, as in TRL's DPO data layout. Each prompt is
    run once (left-padded; its KV cache repeated K times) and only the option tokens reach the LM head,
    so K options cost about one forward pass of the prompt instead of K. A prompt longer than
    ``max_length`` − its longest option keeps its last tokens (at least one).
    """
    if len(prompts) != len(options) or len({len(o) for o in options}) > 1:
        raise ValueError(
            f"need one equally long option list per prompt; got {len(prompts)} prompts and option "
            f"lists of lengths {sorted({len(o) for o in options})}"
        )
    out = np.zeros((len(prompts), len(options[0]) if options else 0))
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        o_ids = [[tokenizer(o, add_special_tokens=False)["input_ids"] for o in opts] for opts in options[chunk]]
        if any(not o for opts in o_ids for o in opts):
            raise ValueError("an option is empty; every option needs at least one token")
        p_ids = [
            tokenizer(format_prompt(tokenizer, p, use_chat_template), add_special_tokens=False)["input_ids"]
            for p in prompts[chunk]
        ]
        p_ids = [ids[-max(1, max_length - max(map(len, opts))) :] for ids, opts in zip(p_ids, o_ids)]
        out[chunk] = _option_batch(model, tokenizer.pad_token_id, p_ids, o_ids)
    return out


def _option_batch(model, pad: int, p_ids: list[list[int]], o_ids: list[list[list[int]]]) -> np.ndarray:
    """``option_logprobs`` of one batch: (b, K) Σ log-probs of the option tokens, prompts run once."""
    device = next(model.parameters()).device
    b, k, width = len(p_ids), len(o_ids[0]), max(map(len, p_ids))
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in p_ids], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in p_ids], device=device)
    first = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
    )
    lp_first = torch.log_softmax(first.logits[:, -1].float(), -1).repeat_interleave(k, 0)  # (b·k, V)
    cache = first.cache
    cache.batch_repeat_interleave(k)
    flat = [o for opts in o_ids for o in opts]
    span = max(map(len, flat))
    opt = torch.tensor([o + [pad] * (span - len(o)) for o in flat], device=device)
    opt_mask = torch.tensor([[1] * len(o) + [0] * (span - len(o)) for o in flat], device=device)
    start_pos = mask.sum(1).repeat_interleave(k, 0).unsqueeze(1)
    tot = lp_first.gather(1, opt[:, :1]).squeeze(1)
    if span > 1:  # the options' own tokens predict their next tokens; one-token options need no second pass
        att = torch.cat([mask.repeat_interleave(k, 0), opt_mask[:, :-1]], 1)
        pos = start_pos + torch.arange(span - 1, device=device)
        rest = model(input_ids=opt[:, :-1], attention_mask=att, position_ids=pos, cache=cache)
        lp_rest = torch.log_softmax(rest.logits.float(), -1)  # position t predicts option token t+1
        tot += (lp_rest.gather(-1, opt[:, 1:].unsqueeze(-1)).squeeze(-1) * opt_mask[:, 1:]).sum(1)
    return tot.double().cpu().numpy().reshape(b, k)
