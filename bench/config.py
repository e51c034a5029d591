"""Suite configuration: TOML → frozen, validated pydantic models (unknown keys are errors).

A suite is a TOML file: the ones shipped in ``bench/suites/`` are found by name (``smoke``,
``default``, ``paper``); any other path loads too. Example::

    python -m bench run suite bench/suites/smoke.toml --dry-run
"""

from __future__ import annotations

import itertools
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from bench.browse.config import BrowseConfig
from bench.core.errors import ConfigError
from bench.core.settings import Settings
from bench.methods import METHODS
from bench.models import TinySpec
from saes.base_config import BaseSAEConfig
from saes.grid import SAEGridConfig
from tasks import TASKS


class SuiteError(ConfigError):
    """A suite that cannot be found or does not validate; the message names the bad key."""


class _Strict(Settings):
    """Suite tables: unknown keys, non-finite floats and booleans-for-numbers are errors (``Settings``)."""


class TinyModelConfig(_Strict):
    """Shape of a ``tiny:llama`` model (ignored for other model ids)."""

    n_layers: int = Field(2, ge=1)
    d_model: int = Field(64, ge=8)
    d_mlp: int = Field(128, ge=8)
    n_heads: int = Field(4, ge=1)
    n_kv_heads: int = Field(2, ge=1)
    tokenizer: str = "embedded:smollm2-135m-instruct"
    """Tokenizer spec; the SmolLM2 tokenizer (with its chat template) by default."""

    def spec(self) -> TinySpec:
        return TinySpec(
            n_layers=self.n_layers,
            d_model=self.d_model,
            d_mlp=self.d_mlp,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            tokenizer=self.tokenizer,
        )


class ModelConfig(_Strict):
    id: str = "embedded:smollm2-135m-instruct"
    """``embedded:<name>``, ``tiny:llama``, a Hugging Face hub id, or a local folder."""
    revision: str | None = None
    """A hub model's branch, tag or commit (default ``main``): resolved to its commit hash where the hub is
    reachable, and that commit is in every stage key and job record (``bench.identity.model_identity``)."""
    tiny: TinyModelConfig = TinyModelConfig()


class HookConfig(_Strict):
    """The regularised layer: where DecPO/L1 act, training curves are recorded and SAEs are trained."""

    module: str = "mlp.up_proj"
    """Module inside each decoder block; ``mlp.up_proj`` falls back to ``mlp.c_fc`` for GPT-2."""
    layer: int | float = 0.5
    """Layer index (int; negative counts from the end) or fraction of depth (float in [0, 1))."""


class ProxyConfig(_Strict):
    """Neuron proxies (SPEC §4) on held-out task prompts."""

    n_texts: int = Field(256, ge=2)
    """Held-out pairs per task (fewer if the task has fewer), each read as prompt + chosen reply + EOS."""
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(512, ge=8)
    """Longest proxy input in tokens; a longer one is an error (inputs are never cut)."""


class EvalConfig(_Strict):
    beta: float = Field(0.1, gt=0)
    """β of the DPO implicit reward used for held-out ``reward_margin`` / ``pref_acc``."""
    batch_size: int = Field(16, ge=1)


class SuiteConfig(_Strict):
    """One benchmark suite: model × tasks × methods × seeds, plus the measurement settings."""

    name: str
    description: str = ""
    seeds: list[int] = [0]
    """Random seeds, one job per (task, method, seed): non-empty, non-negative, each once."""
    model: ModelConfig = ModelConfig()
    hook: HookConfig = HookConfig()
    proxies: ProxyConfig = ProxyConfig()
    eval: EvalConfig = EvalConfig()
    tasks: dict[str, SerializeAsAny[BaseModel]]
    """Task name → that task's config table (fields of its config class)."""
    methods: dict[str, SerializeAsAny[BaseModel]]
    """Method name → that method's config table; ``base`` takes none."""
    sae: SerializeAsAny[BaseModel] | None = None
    """A fresh SAE per model, trained on the task's token set, and its scores ([sae] table); omit to skip."""
    sae_base: SerializeAsAny[BaseModel] | None = None
    """One base SAE on a generic corpus, read on (transfer) and fine-tuned to every model (drift)
    ([sae_base] table, ``saes.base_config``); omit to skip."""
    browse: BrowseConfig = BrowseConfig()
    """Size caps of the feature browser (``python -m bench browse``)."""
    grid: dict[str, list[Any]] = {}
    """Sweeps as ordinary jobs: ``"methods.<method>.<field>" = [v1, v2, …]`` replaces ``<method>`` by one variant
    per combination of the listed values (``decpo@lambda=0.01,layer=7``), each cached, resumable, sharded and
    on the leaderboard like any method."""

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("seeds = [] runs nothing; give at least one seed, e.g. seeds = [0]")
        if bad := [s for s in seeds if s < 0]:
            raise ValueError(f"seeds {bad} are negative; seeds must be ≥ 0")
        if dup := sorted({s for s in seeds if seeds.count(s) > 1}):
            raise ValueError(f"seeds {dup} are listed twice; list each seed once")
        return seeds

    def needs_hub(self) -> bool:
        """Whether any input is a hub id: a model that is not embedded, tiny or a local folder, or a task
        source ``hf:<dataset>``. Without one the runner keeps every library offline (``compat.hub_offline``)."""
        mid = self.model.id
        local_model = mid.startswith(("embedded:", "tiny:")) or Path(mid).expanduser().exists()
        sources = [str(getattr(t, "source", "")) for t in self.tasks.values()]
        return not local_model or any(src.startswith("hf:") for src in sources)

    @model_validator(mode="before")
    @classmethod
    def _typed_tables(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data

        data = dict(data)
        data["tasks"] = _resolve_tables("tasks", data.get("tasks"), {k: v.config_cls for k, v in TASKS.items()})
        methods = expand_grid(data.get("methods"), data.get("grid") or {})
        data["methods"] = _resolve_tables("methods", methods, {k: v.config_cls for k, v in METHODS.items()})
        if data.get("sae") is not None and not isinstance(data["sae"], SAEGridConfig):
            data["sae"] = _validate(SAEGridConfig, data["sae"], "sae")
        if data.get("sae_base") is not None and not isinstance(data["sae_base"], BaseModel):
            data["sae_base"] = _validate(BaseSAEConfig, data["sae_base"], "sae_base")
        if not data["tasks"]:
            raise ValueError("[tasks] is empty; name at least one task")
        if not data["methods"]:
            raise ValueError("[methods] is empty; name at least one method (e.g. [methods.base])")
        return data


def _validate(cls: type[BaseModel], table: Any, where: str) -> BaseModel:
    if isinstance(table, cls):
        return table
    if isinstance(table, BaseModel):  # e.g. a plain SAEConfig where the table takes its subclass
        table = table.model_dump()
    try:
        return cls.model_validate(table or {})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg += f"; allowed keys here: {', '.join(_allowed_keys(cls, err['loc'][:-1]))}"
        raise ValueError(f"[{where}] {loc}: {msg}" if loc else f"[{where}] {msg}") from None


def _allowed_keys(cls: type[BaseModel], path: tuple) -> list[str]:
    """The keys a (nested) table of ``cls`` accepts, e.g. ``[sae.eval]`` for path ("eval",)."""
    for part in path:
        ann = cls.model_fields[str(part)].annotation if str(part) in cls.model_fields else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return sorted(cls.model_fields)
        cls = ann
    return [f.alias or n for n, f in cls.model_fields.items()]


def _resolve_tables(kind: str, tables: Any, registry: dict[str, type[BaseModel]]) -> dict[str, BaseModel]:
    """Validate each table against its registered config class (a grid variant ``m@…`` against ``m``'s)."""
    if tables is None:
        return {}
    if not isinstance(tables, dict):
        raise ValueError(f"[{kind}] must be a table of tables, got {type(tables).__name__}")
    unknown = sorted({n for n in tables if n.split("@", 1)[0] not in registry})
    if unknown:
        raise ValueError(f"unknown {kind[:-1]}(s) {unknown} in [{kind}]; registered: {', '.join(sorted(registry))}")
    return {name: _validate(registry[name.split("@", 1)[0]], table, f"{kind}.{name}") for name, table in tables.items()}


def _fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)


def expand_grid(methods: Any, grid: dict[str, Any]) -> Any:
    """[methods] with every method named in ``grid`` replaced by its variants (the cartesian product of its
    listed values, in grid order), named ``<method>@<field>=<value>,…``. A method already expanded (absent,
    its variants present) is left as it is, so a validated suite validates again unchanged."""
    if not grid or not isinstance(methods, dict):
        return methods
    per_method: dict[str, list[tuple[str, list[Any]]]] = {}
    for key, values in grid.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "methods":
            raise ValueError(f'[grid] key {key!r} must be "methods.<method>.<field>" (e.g. "methods.decpo.lambda")')
        if not isinstance(values, list) or not values:
            raise ValueError(f"[grid] {key} must be a non-empty list of values, got {values!r}")
        per_method.setdefault(parts[1], []).append((parts[2], values))
    out = dict(methods)
    for name, fields in per_method.items():
        if name not in out:
            if any(m.startswith(f"{name}@") for m in out):
                continue
            raise ValueError(f"[grid] sweeps method {name!r}, which has no [methods.{name}] table")
        table = out.pop(name)
        base = table.model_dump(by_alias=True) if isinstance(table, BaseModel) else dict(table or {})
        for combo in itertools.product(*(v for _, v in fields)):
            setting = dict(zip((f for f, _ in fields), combo))
            out[f"{name}@" + ",".join(f"{f}={_fmt_value(v)}" for f, v in setting.items())] = base | setting
    return out


def shipped_suites() -> dict[str, Path]:
    """Suites shipped inside the package: name → path."""
    folder = resources.files("bench.suites")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def load_suite(name_or_path: str) -> tuple[SuiteConfig, Path]:
    """A shipped suite by name, or any TOML path → (validated config, its file)."""
    shipped = shipped_suites()
    path = Path(name_or_path)
    if name_or_path in shipped:
        path = shipped[name_or_path]
    elif not path.suffix == ".toml" or not path.is_file():
        raise SuiteError(
            f"no suite {name_or_path!r}: not a shipped suite ({', '.join(sorted(shipped))}) nor an existing .toml file"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"suite {path}: malformed TOML: {e}") from None
    raw.setdefault("name", path.stem)
    try:
        return SuiteConfig.model_validate(raw), path
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key (allowed: {', '.join(SuiteConfig.model_fields) if '.' not in loc else 'see the docs'})"
        raise SuiteError(f"suite {path.name}: {loc}: {msg}") from None
