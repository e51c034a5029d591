"""DecPO and L1-regularised DPO as subclasses of TRL's ``DPOTrainer`` (SPEC.md §2).

Both add a penalty on Z ∈ R^{B×d}: the output of one layer's MLP input projection (``mlp.up_proj``;
``mlp.c_fc`` for GPT-2) at each sequence's last non-padding token — the EOS token TRL appends after the
reply (``bench.lm.READOUT``; the proxies and curves read the same token of the same sequence) — for every
row of the batch (TRL's collator stacks the chosen rows first, then the rejected rows, so B = 2 × pairs).

- DecPO (Yan et al. 2024, arXiv 2406.17969): L = L_DPO + λ·‖Z Zᵀ − I‖²_F, rows L2-normalised
  first by default (``normalize=True``). The paper's raw form is ``normalize=False``; its public code
  instead adds the row mean of (|Z||Z|ᵀ − I), unsquared, which this module does not reproduce.
- L1 ("L1-Reg" baseline of the paper): L = L_DPO + λ₁·mean_b ‖z_b‖₁.

The activation is captured by a forward hook that fires only while gradients are enabled, so the
reference pass (under ``torch.no_grad``) and evaluation passes never touch it. The penalty's value
(before λ) is logged per step as ``reg/decor`` or ``reg/l1`` through TRL's ``self._metrics`` buffer.

``CurveCallback`` records the training curves of every method (held-out preference metrics and the
neuron proxies at the regularised layer every K steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from beartype import beartype
from jaxtyping import Float, jaxtyped
from torch import Tensor, nn
from transformers import TrainerCallback
from trl import DPOTrainer

from bench.core.hooks import LastTokenCapture
from bench.core.lm import hook_module
from bench.core.preference import pair_logprobs
from bench.core.task import Pair
from bench.proxies import collect_last_token, layer_proxies
from bench.ref_logps import RefLogpsMemo, row_key


@jaxtyped(typechecker=beartype)
def decorrelation_penalty(z: Float[Tensor, "row d"], normalize: bool = True) -> Float[Tensor, ""]:
    """DecPO term ‖Z Zᵀ − I‖²_F = Σ_{i,j} (z_i·z_j − δ_ij)², in float32.

    ``normalize=True`` replaces each row by z_i/‖z_i‖₂ first, so Z Zᵀ is the cosine matrix and the term
    is Σ_{i≠j} cos²(z_i, z_j) ∈ [0, B(B−1)]. ``normalize=False`` is the paper's raw form, whose scale
    grows with ‖z‖⁴. Measured on SmolLM2-135M-Instruct, 16 rows (8 pairs, EOS position): normalised
    ≈ 240 / 180 / 220 and raw ≈ 1e7 / 1e8 / 6e9 at layers 0 / 15 / 29.
    """
    z = z.float()
    if normalize:
        z = F.normalize(z, dim=1, eps=1e-12)
    gram = z @ z.T - torch.eye(z.shape[0], dtype=z.dtype, device=z.device)
    return (gram**2).sum()


@jaxtyped(typechecker=beartype)
def l1_penalty(z: Float[Tensor, "row d"]) -> Float[Tensor, ""]:
    """L1 term mean_b ‖z_b‖₁ = (1/B) Σ_b Σ_k |z_bk|, in float32."""
    return z.float().abs().sum(dim=1).mean()


class SharedRefDPOTrainer(DPOTrainer):
    """TRL ``DPOTrainer`` whose reference precomputation (``precompute_ref_log_probs=True``) goes through a
    ``RefLogpsMemo``: stored rows are read, only the missing ones are computed (by TRL's own
    ``_precompute_ref_logps``, which ``bench.core.compat.check_trl`` requires) and added to the memo.
    Without ``ref_memo`` it is TRL's trainer unchanged."""

    def __init__(self, *args, ref_memo: RefLogpsMemo | None = None, **kwargs):
        self.ref_memo = ref_memo  # read by _precompute_ref_logps, which DPOTrainer.__init__ calls
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        memo = self.ref_memo
        if memo is None or name != "train":
            return super()._precompute_ref_logps(dataset, name, batch_size)
        args = self.args  # a trl.DPOConfig (typed by transformers as TrainingArguments)
        memo.scoped(
            max_length=getattr(args, "max_length"),  # noqa: B009
            truncation_mode=getattr(args, "truncation_mode"),  # noqa: B009
            ld_alpha=self.ld_alpha,
            loss_type=list(getattr(args, "loss_type")),  # noqa: B009
        )
        keys = [row_key(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in dataset]
        with memo.locked():  # a second worker on the same rows waits and reuses them
            stored, missing = memo.lookup(keys)
            if missing:
                first = {k: i for i, k in reversed(list(enumerate(keys)))}
                rows = dataset.select([first[k] for k in missing])
                part = super()._precompute_ref_logps(rows, name, batch_size)
                new = {
                    k: [float(c), float(r)]
                    for k, c, r in zip(missing, part["ref_chosen_logps"], part["ref_rejected_logps"], strict=True)
                }
                memo.add(new)
                stored.update(new)
        memo.computed += len(missing)
        memo.reused += len(keys) - len(missing)
        return dataset.add_column("ref_chosen_logps", [stored[k][0] for k in keys]).add_column(
            "ref_rejected_logps", [stored[k][1] for k in keys]
        )


class ActivationRegularisedDPOTrainer(SharedRefDPOTrainer):
    """``DPOTrainer`` whose loss adds ``coef · penalty(Z)`` on one layer's last-token activations.

    Overrides ``compute_loss`` only (TRL's ``log`` already averages every key of ``self._metrics``).
    Subclasses set ``penalty_name`` and implement ``penalty``. The hook is registered after TRL has
    wrapped the model with PEFT, so with LoRA it sees the adapted projection's output.
    """

    penalty_name: str = ""
    read_batch_last: bool = False
    """Read position −1 of the padded batch (a pad token for shorter rows under TRL's right padding)
    instead of each row's last real token (the EOS after its reply)."""

    def __init__(self, *args, layer: int, coef: float, hook: str = "mlp.up_proj", **kwargs):
        super().__init__(*args, **kwargs)
        if coef < 0:
            raise ValueError(f"penalty coefficient must be >= 0, got {coef}")
        self.reg_layer, self.reg_coef, self.reg_hook = layer, coef, hook
        assert self.model is not None  # Trainer.__init__ sets it (from model or model_init)
        self._capture = LastTokenCapture(hook_module(self.model, layer, hook), only_with_grad=True)

    def penalty(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        tok = getattr(self, "_tokenizer", self.processing_class)
        if self.read_batch_last:  # position −1 of the padded batch, whatever token is there
            self._capture.arm(torch.ones_like(inputs["attention_mask"]))
        else:
            self._capture.arm(inputs["attention_mask"], inputs.get("input_ids"), tok.eos_token_id)
        try:
            out = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        finally:
            z = self._capture.take()
        if z is None:  # evaluation / no-grad pass: nothing to regularise
            return out
        term = self.penalty(z)
        mode = "train" if self.model.training else "eval"
        value = self.accelerator.gather_for_metrics(term.detach()).mean().item()
        self._metrics[mode][f"reg/{self.penalty_name}"].append(value)
        if return_outputs:
            loss, outputs = out
            return loss + self.reg_coef * term, outputs
        return out + self.reg_coef * term


class DecPOTrainer(ActivationRegularisedDPOTrainer):
    """DecPO: L_DPO + λ·‖Z Zᵀ − I‖²_F (``decorrelation_penalty``); ``normalize`` picks the cosine form."""

    penalty_name = "decor"

    def __init__(self, *args, normalize: bool = True, **kwargs):
        self.normalize = normalize
        super().__init__(*args, **kwargs)

    def penalty(self, z: Tensor) -> Tensor:
        return decorrelation_penalty(z, self.normalize)


class L1DPOTrainer(ActivationRegularisedDPOTrainer):
    """L1-Reg: L_DPO + λ₁·mean_b ‖z_b‖₁ (see ``l1_penalty``)."""

    penalty_name = "l1"

    def penalty(self, z: Tensor) -> Tensor:
        return l1_penalty(z)


class NoiseSeed(TrainerCallback):
    """Reseeds torch's RNG when training begins, after the trainer initialised the model (LoRA weights
    keep the job seed), so the dropout draws follow ``seed`` (the job seed + 1000 × ``noise_seed``)."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_begin(self, args, state, control, **kw):
        torch.manual_seed(self.seed)


class CurveCallback(TrainerCallback):
    """One curve row at step 0, every ``every`` optimiser steps and at the last step.

    A row holds ``step``; ``train/*`` and ``eval/*`` preference metrics on fixed train and held-out
    pairs, defined exactly as ``tasks._base.preference_metrics`` (β = ``beta``; reference = ``reference``
    or the adapter-disabled policy; its log-probs are computed once, at step 0, where policy = reference);
    ``eval/decpo_term`` (‖Ẑ Ẑᵀ − I‖²_F, rows normalised, on the last-token activations at ``layer`` of the
    held-out ``proxy_pairs``, each read as prompt + chosen reply like a training sequence); ``proxy/*``
    (``bench.proxies.layer_proxies`` of the same activations); and
    ``trainer/*``, the trainer's own averages over the last window (loss, reward_margin, pref_acc,
    reg/decor or reg/l1).
    """

    def __init__(
        self,
        tokenizer,
        train_pairs: list[Pair],
        eval_pairs: list[Pair],
        proxy_pairs: Sequence[Pair],
        *,
        layer: int,
        hook: str,
        every: int,
        beta: float,
        reference: nn.Module | None,
        use_chat_template: bool,
    ):
        self.tokenizer, self.proxy_pairs = tokenizer, list(proxy_pairs)
        self.pairs = {"train": train_pairs, "eval": eval_pairs}
        self.layer, self.hook, self.every, self.beta = layer, hook, every, beta
        self.reference, self.use_chat_template = reference, use_chat_template
        self.rows: dict[int, dict[str, float]] = {}
        self._ref: dict[str, tuple[Tensor, Tensor]] = {}

    def curves(self) -> list[dict[str, float]]:
        return [self.rows[s] for s in sorted(self.rows)]

    def _logps(self, model: nn.Module, pairs: list[Pair]) -> tuple[Tensor, Tensor]:
        return pair_logprobs(model, self.tokenizer, pairs, use_chat_template=self.use_chat_template)

    def _pref(self, split: str, pol: tuple[Tensor, Tensor]) -> dict[str, float]:
        (w, l), (w_ref, l_ref), pairs = pol, self._ref[split], self.pairs[split]
        margin = self.beta * ((w - w_ref) - (l - l_ref))
        acc = (margin > 0).double() + 0.5 * (margin == 0).double()
        n_tok = [max(1, len(self.tokenizer(p.chosen, add_special_tokens=False)["input_ids"])) for p in pairs]
        return {
            f"{split}/pref_acc": float(acc.mean()),
            f"{split}/reward_margin": float(margin.mean()),
            f"{split}/logp_chosen": float((w / torch.tensor(n_tok)).mean()),
        }

    def measure(self, model: nn.Module, step: int) -> None:
        was_training = model.training
        model.eval()
        try:
            pol = {split: self._logps(model, pairs) for split, pairs in self.pairs.items()} if self._ref else None
            if pol is None:  # step 0: the policy is the reference (fresh LoRA has B = 0; full FT copies)
                self._ref = pol = {
                    split: self._logps(self.reference or model, pairs) for split, pairs in self.pairs.items()
                }
            z = collect_last_token(
                model,
                self.tokenizer,
                [p.prompt for p in self.proxy_pairs],
                [self.layer],
                hook=self.hook,
                use_chat_template=self.use_chat_template,
                max_length=1 << 20,
                replies=[p.chosen for p in self.proxy_pairs],
            )[self.layer]
        finally:
            model.train(was_training)
        row = self.rows.setdefault(step, {"step": step})
        row.update(self._pref("train", pol["train"]) | self._pref("eval", pol["eval"]))
        row["eval/decpo_term"] = float(decorrelation_penalty(z, normalize=True))
        row.update({f"proxy/{k}": v for k, v in layer_proxies(z).items()})

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.measure(model, 0)

    def on_step_end(self, args, state, control, model=None, **kw):
        step = state.global_step
        if step % self.every == 0 or step >= state.max_steps:
            control.should_log = True  # so the trainer's window averages land in the same row
            self.measure(model, step)

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "loss" not in logs:  # the end-of-training summary has train_loss, not loss
            return
        renames = {
            "loss": "trainer/loss",
            "rewards/margins": "trainer/reward_margin",
            "rewards/accuracies": "trainer/pref_acc",
        }
        row = self.rows.setdefault(state.global_step, {"step": state.global_step})
        for k, v in logs.items():
            if isinstance(v, (int, float)) and (k in renames or k.startswith(("reg/", "grad_norm", "learning_rate"))):
                row[renames.get(k, f"trainer/{k}")] = float(v)
