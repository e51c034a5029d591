"""`python -m bench perf`: every benchmark runs end to end on the tiny model and lands in perf.csv.

No timing is asserted here: timings live only in the perf command's own output.
"""

import csv

import pytest
import torch

from benchmarks import perf as P

TINY = P.PerfSizes(
    reps=1,
    warmup=1,
    sae_texts=24,
    sae_context=16,
    sae_batch=32,
    sae_expansion=2,
    sae_k=4,
    collect_batch=8,
    dpo_pairs=2,
    dpo_max_length=96,
    dpo_max_prompt=64,
    proxy_texts=4,
    ref_steps=1,
    ref_batch=2,
    matmul_n=64,
)
BENCHMARKS = set(P.ROWS)


def test_row_medians_ratio_and_goal():
    r = P._row("x", [1.0, 3.0, 2.0], [4.0, 5.0, 6.0], unit="s", ratio_def="ours/peer", goal="<=1.10", notes="")
    assert (r.ours, r.ours_min, r.ours_max, r.peer, r.reps) == (2.0, 1.0, 3.0, 5.0, 3)
    assert r.ratio == pytest.approx(0.4) and r.met is True
    r = P._row("x", [1.0], [4.0], unit="s", ratio_def="peer/ours", goal=">=2", notes="")
    assert r.ratio == pytest.approx(4.0) and r.met is True
    r = P._row("x", [3.0], [4.0], unit="tokens/s", ratio_def="ours/peer", goal=">=2", notes="")
    assert r.met is False
    assert P._row("x", [1.0], [1.0], unit="s", ratio_def="ours/peer", goal="", notes="").met is None


def test_alternate_warms_up_then_rotates_the_order():
    calls = []
    sides = {n: (lambda n=n: calls.append(n) or 1.0) for n in ("a", "b", "c")}
    times = P.alternate(sides, reps=3, warmup=1)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert times == {"a": [1.0] * 3, "b": [1.0] * 3, "c": [1.0] * 3}


def test_token_rows_concatenate_and_cut():
    assert P.token_rows([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4) == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_csv_and_table_include_not_run_rows(tmp_path):
    rows = [
        P._row(
            "sae_pipeline", [10.0, 12.0], [5.0, 6.0], unit="tokens/s", ratio_def="ours/peer", goal=">=2", notes="a, b"
        ),
        P.PerfRow("sae_pipeline_hf", "not run: ImportError: no sae_lens", unit="tokens/s", goal=">=2"),
    ]
    path = P.write_csv(rows, tmp_path / "perf.csv")
    with path.open() as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == list(P.COLUMNS)
    assert got[0]["met"] == "true" and float(got[0]["ratio"]) == pytest.approx(2.0)
    assert got[1]["status"].startswith("not run:") and got[1]["ours"] == ""
    table = P.format_table(rows)
    assert "sae_pipeline" in table and "not run: ImportError" in table and "2 (ours/peer)" in table


def test_transformer_lens_hook_equals_up_proj(tiny_lm):
    model, tok = tiny_lm
    ht = P.hooked_transformer(model, tok)
    ids = torch.tensor([tok("The cat sat on the mat.")["input_ids"]])
    assert P.tl_hook_error(model, ht, ids, 1, "blocks.1.mlp.hook_pre_linear") < 1e-4
    assert P.tl_hook_error(model, ht, ids, 1, "blocks.1.mlp.hook_pre") > 1e-2  # the gate projection, not up_proj


def test_run_perf_writes_every_benchmark(tmp_path, capsys):
    rows = P.run_perf(tmp_path, quick=True, device="cpu", model_spec="tiny:llama", sizes=TINY)
    assert {r.benchmark for r in rows} == BENCHMARKS
    with (tmp_path / "perf.csv").open() as f:
        got = {r["benchmark"]: r for r in csv.DictReader(f)}
    assert set(got) == BENCHMARKS
    for name, r in got.items():
        assert r["status"] == "ok", (name, r["status"])
        for col in ("ours", "peer", "ratio", "ours_min", "ours_max", "peer_min", "peer_max"):
            assert float(r[col]) > 0, (name, col)
        assert float(r["ours_min"]) <= float(r["ours"]) <= float(r["ours_max"])
        assert r["device"].startswith("cpu")
    assert "rel. err vs up_proj" in got["sae_pipeline"]["notes"]
    assert "MultiSAETrainingRunner" in got["multi_sae"]["notes"] and "layers [0, 1]" in got["multi_sae"]["notes"]
    assert not any(p.name.startswith(".perf-") for p in tmp_path.iterdir())  # scratch folder removed
    out = capsys.readouterr().out
    assert all(name in out for name in BENCHMARKS)
    assert [r.benchmark for r in rows] == list(P.ROWS)
    # --only reruns one row and keeps the others
    before = {r["benchmark"]: r for r in csv.DictReader((tmp_path / "perf.csv").open())}
    P.run_perf(tmp_path, quick=True, device="cpu", model_spec="tiny:llama", sizes=TINY, only=["proxies_one_pass"])
    after = {r["benchmark"]: r for r in csv.DictReader((tmp_path / "perf.csv").open())}
    assert set(after) == BENCHMARKS and after["decpo_step"] == before["decpo_step"]


@pytest.mark.slow
def test_transformer_lens_hook_equals_up_proj_on_smollm(smollm):
    model, tok = smollm
    ht = P.hooked_transformer(model, tok)
    ids = torch.tensor([tok("The quick brown fox jumps over the lazy dog near the river bank.")["input_ids"]])
    assert P.tl_hook_error(model, ht, ids, 15, "blocks.15.mlp.hook_pre_linear") < 1e-4
