"""``dpo_aa``: the A/A control — DPO again, differing from ``dpo`` only in its training randomness.

Same data, same LoRA initialisation, same hyper-parameters; the data order and the dropout draws come
from the seed offset ``noise_seed = 1``. Paired by seed with ``dpo`` exactly like DecPO − DPO, its
differences show what training randomness alone moves each metric by; their 95 % intervals must cover
0 at the nominal rate (``bench validate`` checks it on the tiny model), and the report prints the A/A
row beside DecPO − DPO. The A/A control itself is in ``bench/validate_aa.py``.
"""

from pydantic import Field

from bench.methods._base import Method, register_method
from bench.methods.dpo import DPOMethodConfig, build


class DPOAAMethodConfig(DPOMethodConfig):
    """``dpo_aa``: ``dpo`` with another draw of training randomness (data order, dropout)."""

    noise_seed: int = Field(1, ge=1)
    """Offset of the data-order and dropout seed from the job seed (≥ 1: it must differ from ``dpo``'s 0)."""


register_method(
    Method(
        "dpo_aa",
        DPOAAMethodConfig,
        label="DPO (A/A)",
        order=25,
        uses_reference=True,
        build=build,
        control=True,
        summary="control: DPO again with other training randomness (A/A)",
    )
)
