"""Report: figures and report.md/html from a synthetic results folder, written file by file."""

import math

import numpy as np
import pandas as pd
import pytest

from bench.core.errors import StoreError
from bench.core.io import stable_hash, write_json
from bench.figure_specs import FIGURES
from bench.figures import t_interval
from bench.leaderboard import seed_summary, write_leaderboard
from bench.report import Table, to_html, to_markdown, write_report
from bench.store import Store

N_LAYERS, HOOK = 4, 2
TASK_METRICS = {"toxicity": "tox_rate", "reframing": "positivity_gain", "sycophancy": "syco_rate"}
SHIFT = {"base": 0.0, "sft": 0.05, "dpo": 0.1, "simpo": 0.1, "l1": 0.15, "decpo": 0.2}


def _stage(root, name, ident, metrics, **files):
    key = f"{name}-{stable_hash([name, *ident])}"
    folder = root / "runs" / key
    write_json(folder / "metrics.json", metrics)
    write_json(folder / "stage.json", {"key": key})
    for fname, obj in files.items():
        if isinstance(obj, pd.DataFrame):
            obj.to_csv(folder / fname.replace("_csv", ".csv"), index=False)
        else:
            write_json(folder / fname.replace("_json", ".json"), obj)
    return key


def _curves(rng, method):
    steps = np.arange(0, 40, 5)
    lift = 0.1 if method == "decpo" else 0.0
    noise = lambda s: rng.normal(0, s, len(steps))  # noqa: E731
    return pd.DataFrame(
        {
            "step": steps,
            "train/reward_margin": 0.02 * steps + noise(0.05),
            "eval/reward_margin": 0.015 * steps + noise(0.05),
            "train/pref_acc": np.linspace(0.5, 0.8, len(steps)),
            "proxy/decorrelation": 0.5 + lift * steps / 40 + noise(0.01),
            "eval/decpo_term": np.linspace(10, 5, len(steps)),
        }
    )


def _job(root, rng, task, method, seed, *, sae, curves, top_tokens, n_layers):
    ident = (task, method, seed)
    stages = {
        "data": _stage(
            root,
            "data",
            (task, seed),
            [{"metric": "n_train_pairs", "value": 8.0}],
            data_json={"task": task, "provenance": {"source": "embedded", "model_generated": ["chosen"]}},
        )
    }
    if method != "base":
        stages["train"] = _stage(root, "train", ident, [], **({"curves_csv": _curves(rng, method)} if curves else {}))
    shift = SHIFT[method]
    stages["eval"] = _stage(
        root,
        "eval",
        ident,
        [
            {"metric": "align_score", "value": 0.4 + shift + rng.normal(0, 0.03)},
            {"metric": TASK_METRICS[task], "value": 0.5 - shift},
            {"metric": "pref_acc", "value": 0.5 + shift},
            {"metric": "reward_margin", "value": shift},
        ],
    )
    proxies = []
    for layer in range(n_layers):
        for name, v in (
            ("decorrelation", 0.8 - 0.6 * layer / n_layers + shift / 2),
            ("act_variance", 0.1 + layer + shift),
            ("mono_scale", 0.3),
            ("decor_loss", 0.2 - shift / 4),
        ):
            proxies.append({"metric": name, "value": v + rng.normal(0, 0.01), "layer": layer})
    extra = (
        {"top_tokens_json": [{"layer": HOOK, "neuron": 7, "change": 1.5, "tokens": [" the", "|x", "\n"]}]}
        if top_tokens and method == "decpo"
        else {}
    )
    stages["proxies"] = _stage(root, "proxies", ident, proxies, **extra)
    if sae:
        stages["acts"] = _stage(root, "acts", ident, [])
        stages["sae"] = _stage(
            root,
            "sae",
            ident,
            [
                {"metric": m, "value": v + rng.normal(0, 0.02), "layer": HOOK, "sae": "topk"}
                for m, v in (
                    ("sae_frac_interpretable", 0.3 + shift),
                    ("sae_frac_decorrelated", 0.6),
                    ("sae_frac_interp_decor", 0.2 + shift / 2),
                    ("sae_explained_variance", 0.9),
                )
            ],
        )
    return {
        "job": f"{task}__{method}__s{seed}",
        "suite": "synthetic",
        "model": "tiny:llama",
        "task": task,
        "method": method,
        "seed": seed,
        "hook_layer": HOOK,
        "monobench_version": "0.1.0",
        "config_hash": stable_hash(["cfg", *ident], n=12),
        "stages": stages,
    }


def make_results(
    root,
    seeds=(0, 1),
    sae=True,
    curves=True,
    top_tokens=False,
    tasks=("toxicity", "sycophancy"),
    methods=("base", "dpo", "decpo"),
    n_layers=N_LAYERS,
):
    """A results folder as ``run suite`` leaves it: stage folders, job records, manifest, CSVs."""
    rng = np.random.default_rng(0)
    store = Store(root)
    for seed in seeds:
        for task in tasks:
            for method in methods:
                rec = _job(
                    root, rng, task, method, seed, sae=sae, curves=curves, top_tokens=top_tokens, n_layers=n_layers
                )
                store.write_job(rec["job"], rec)
    write_json(
        root / "manifest.json",
        {
            "monobench_version": "0.1.0",
            "git_commit": "abc123-dirty",
            "python": "3.12.0",
            "packages": {"torch": "2.13.0"},
            "hardware": {"device": "cpu"},
            "suite": "synthetic",
            "seeds": list(seeds),
            "written": "2026-11-23T07:00:00+0000",
            "data_provenance": {"data-1": {"task": "toxicity", "source": "embedded", "model_generated": ["chosen"]}},
        },
    )
    return write_leaderboard(root)


def test_full_report(tmp_path):
    board = make_results(tmp_path, top_tokens=True)
    path = write_report(tmp_path)
    assert path == tmp_path / "report.md"
    md = path.read_text()
    for spec in FIGURES:
        png = tmp_path / "figures" / f"{spec.name}.png"
        assert png.is_file() and png.stat().st_size > 10_000, spec.name
        assert f"figures/{spec.name}.png" in md
    for h in board["config_hash"]:
        assert h in md
    assert "within the 95 % CI are noise" in md and "CITATION.cff" in md
    assert "model_generated" in md and "abc123-dirty" in md
    assert '" the"' in md and "\\|x" in md  # the top-token table, cells escaped
    page = (tmp_path / "report.html").read_text()
    assert page.count('<img src="figures/') == len(FIGURES) and "<table>" in page
    claims = pd.read_csv(tmp_path / "claims.csv")
    assert set(claims["claim"]) == {f"C{i}" for i in range(1, 7)} and "Claims checklist" in md
    assert "Table 2: alignment, ours beside the paper's" in md and "Table 1: top tokens" in md


def test_a_figure_no_longer_drawn_is_removed(tmp_path):
    make_results(tmp_path, seeds=(0,), sae=False)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "training_curves.png").write_bytes(b"from an older monobench")
    write_report(tmp_path)
    assert not (tmp_path / "figures" / "training_curves.png").exists()


def test_without_sae_and_curves(tmp_path):
    make_results(tmp_path, seeds=(0,), sae=False, curves=False)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "sae_fractions.png").write_bytes(b"stale")
    md = write_report(tmp_path).read_text()
    figs = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert figs == {
        "fig3_proxy_change.png",
        "fig4_decorrelation_by_depth.png",
        "fig6_act_variance_diff.png",
        "align_score.png",
    }
    assert "Skipped (`fig5_decorrelation_over_training.png`" in md and "Skipped (`sae_fractions.png`" in md
    assert "One seed only" in md and "No top-token file" in md


def test_merged_folder_with_csvs_only(tmp_path):
    src = tmp_path / "src"
    board = make_results(src, seeds=(0,), sae=False, curves=False)
    out = tmp_path / "merged"
    out.mkdir()
    board.to_csv(out / "leaderboard.csv", index=False)
    md = write_report(out).read_text()
    assert (out / "figures" / "align_score.png").is_file()
    assert "No `manifest.json`" in md and "Skipped (`fig4_decorrelation_by_depth.png`" in md


def test_renders_csvs_from_job_records(tmp_path):
    make_results(tmp_path, seeds=(0,), sae=False)
    for f in ("leaderboard.csv", "metrics.csv"):
        (tmp_path / f).unlink()
    write_report(tmp_path)
    assert (tmp_path / "leaderboard.csv").is_file()
    assert (tmp_path / "figures" / "fig7_reward_margin_over_training.png").is_file()


@pytest.mark.parametrize("make", [False, True])
def test_missing_or_empty_folder(tmp_path, make):
    d = tmp_path / "nothing"
    if make:
        d.mkdir()
    with pytest.raises(StoreError, match=r"nothing.*run suite"):
        write_report(d)


def test_empty_leaderboard(tmp_path):
    pd.DataFrame(columns=["suite", "model", "task", "method", "seed"]).to_csv(tmp_path / "leaderboard.csv", index=False)
    with pytest.raises(StoreError, match="no rows.*run suite"):
        write_report(tmp_path)


def test_t_interval_matches_leaderboard_ci():
    board = pd.DataFrame(
        {
            "suite": "s",
            "model": "m",
            "task": "t",
            "method": "dpo",
            "seed": [0, 1, 2],
            "config_hash": "h",
            "monobench_version": "v",
            "hook_layer": 0,
            "x": [1.0, 2.0, 4.0],
        }
    )
    lo, hi = t_interval(board["x"])
    assert hi - (lo + hi) / 2 == pytest.approx(seed_summary(board)["x_ci95"].iloc[0])
    # by hand: mean 7/3, s = √(7/3), t(0.975, 2) = 4.302653 → half width 4.302653 · s / √3
    assert (lo + hi) / 2 == pytest.approx(7 / 3) and hi - 7 / 3 == pytest.approx(4.302653 * (7 / 3) ** 0.5 / 3**0.5)
    assert t_interval([3.0]) == (3.0, 3.0)


def test_markdown_and_html_escape_cells():
    blocks = [Table(["a|b", "<c>"], [["`x`", "1 | 2"]])]
    assert "a\\|b" in to_markdown(blocks) and "1 \\| 2" in to_markdown(blocks)
    page = to_html(blocks, "t")
    assert "&lt;c&gt;" in page and "<code>x</code>" in page and "1 | 2" in page


def test_paired_differences_by_seed_against_hand_values():
    from bench.leaderboard import paired_differences

    # d = decpo − dpo per seed = [0.2, 0.25, 0.3]: mean 0.25, sd 0.05, half-width t(0.975, 2) · 0.05 / √3 = 0.124
    board = pd.DataFrame(
        {
            "model": "m",
            "task": "t",
            "seed": [0, 1, 2] * 2,
            "method": ["dpo"] * 3 + ["decpo"] * 3,
            "x": [1.0, 5.0, 9.0, 1.2, 5.25, 9.3],
            "y": [0.0, 1.0, 2.0, 1.0, 0.0, 2.0],
        }
    )
    d = paired_differences(board, ["x", "y", "missing"]).set_index("metric")
    assert d.loc["x", "diff"] == pytest.approx(0.25) and d.loc["x", "n_seeds"] == 3
    assert d.loc["x", "diff_ci95"] == pytest.approx(4.302653 * 0.05 / 3**0.5, rel=1e-5)
    assert bool(d.loc["x", "ci_excludes_0"])  # unpaired, the seed spread (sd 4) would swamp 0.25
    assert d.loc["y", "diff"] == pytest.approx(0.0) and not d.loc["y", "ci_excludes_0"]
    assert "missing" not in d.index
    assert paired_differences(board[board.seed == 0], ["x"]) is None  # one seed: no interval
    # the paired t-test's p, Holm over the table's rows, the 80 %-power MDE, the spread flag
    assert (
        d.loc["x", "p"] == pytest.approx(0.013072, abs=1e-5)
        and d.loc["x", "p_holm"] == pytest.approx(2 * d.loc["x", "p"])
        and bool(d.loc["x", "significant"])
    )
    assert d.loc["y", "p_holm"] == 1.0 and bool(d.loc["y", "noisy"]) and not bool(d.loc["x", "noisy"])
    assert 0 < d.loc["x", "mde"] < 1.0 and not d["no_spread"].any()


def test_an_equal_difference_on_every_seed_is_untested_not_beyond_noise():
    """d = [0.25, 0.25]: no spread, so no t-test — once reported as p = 0, "beyond noise" after Holm."""
    from bench.leaderboard import paired_differences
    from bench.report_stats import comparison_rows

    methods, x = ["dpo"] * 2 + ["decpo"] * 2, [0.5] * 2 + [0.75] * 2
    board = pd.DataFrame({"model": "m", "task": "t", "seed": [0, 1] * 2, "method": methods, "x": x})
    d = paired_differences(board, ["x"])
    r = d.iloc[0]
    assert r["diff"] == 0.25 and r["diff_ci95"] == 0.0 and r["sd"] == 0.0
    assert math.isnan(r["p"]) and math.isnan(r["p_holm"]) and math.isnan(r["mde"])
    assert not r["significant"] and not r["ci_excludes_0"] and r["no_spread"]
    assert comparison_rows(d, many_models=False)[0][6] == "no spread (untested)"
    # equal up to float rounding: 1 − x of equal x's (paper-table's SimPO − DPO align_score, sd 1e-17)
    board["y"] = [0.5, 0.5, 0.75, np.nextafter(0.75, 1.0)]
    y = paired_differences(board, ["y"]).iloc[0]
    assert y["sd"] == 0.0 and math.isnan(y["p"]) and not y["significant"]
    # rounding noise around a true 0 (0.1 + 0.2 − 0.3 = 5.6e-17) is no difference, not an untested one
    board["z"] = [0.3, 0.3, 0.1 + 0.2, 0.3]
    z = paired_differences(board, ["z"]).iloc[0]
    assert z["p"] == 1.0 and not z["no_spread"]
    assert comparison_rows(paired_differences(board, ["z"]), many_models=False)[0][6] == "no"


def test_rows_are_sorted_by_position_even_with_a_repeated_index():
    from bench.report import _sorted

    df = pd.DataFrame({"model": "m", "task": "t", "method": ["decpo", "dpo"], "x": [1, 2]}, index=[0, 0])
    assert _sorted(df)["method"].tolist() == ["dpo", "decpo"] and len(_sorted(df)) == 2


def test_report_has_the_paired_table_with_several_seeds(tmp_path):
    make_results(tmp_path, top_tokens=False)
    md = write_report(tmp_path).read_text()
    assert "DecPO − DPO, paired by seed" in md and "p (Holm)" in md and "MDE (80 %)" in md
