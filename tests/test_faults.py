"""Fault injection: inputs changed in place, damaged stage files — the store never returns a stale or
partial result."""

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.models import TinySpec, load_model


def _claims(path: Path, flip: bool = False) -> None:
    pairs = [(a, b) for a, b in ((3, 5), (9, 2), (7, 1), (2, 8), (6, 4), (1, 9), (8, 3), (4, 6), (5, 7), (12, 10))]
    rows = [{"claim": f"{a} is larger than {b}.", "truth": (a > b) != flip} for a, b in pairs]
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)


def _suite(tmp: Path, model: Path, source: Path) -> Path:
    suite = tmp / "local.toml"
    suite.write_text(
        f'seeds = [0]\n[model]\nid = "{model}"\n[hook]\nlayer = 1\n[proxies]\nn_texts = 4\n'
        f'[tasks.sycophancy]\nsource = "{source}"\ncolumns = {{ text = "claim", label = "truth" }}\n'
        "n_train = 4\nn_eval = 5\nn_eval_unseen = 0\n[methods.base]\n"
    )
    return suite


def _save_tiny(folder: Path, seed: int) -> None:
    model, tok = load_model("tiny:llama", seed=seed, tiny=TinySpec())
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def _run(suite: Path, out: Path) -> dict:
    assert main(["run", "suite", str(suite), "--out", str(out), "--device", "cpu"]) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture
def local_run(tmp_path):
    model, source, out = tmp_path / "model", tmp_path / "claims.jsonl", tmp_path / "out"
    _save_tiny(model, seed=0)
    _claims(source)
    suite = _suite(tmp_path, model, source)
    _run(suite, out)
    return suite, model, source, out


def test_weights_replaced_in_place_rebuild_every_stage(local_run):
    suite, model, _, out = local_run
    before = pd.read_csv(out / "leaderboard.csv")
    _save_tiny(model, seed=1)  # other weights, same folder, same path
    man = _run(suite, out)
    assert man["stages_reused"] == [] and len(man["stages_built"]) == 3  # data, eval, proxies
    after = pd.read_csv(out / "leaderboard.csv")
    assert before["config_hash"][0] != after["config_hash"][0]
    assert before["decorrelation"][0] != after["decorrelation"][0]


def test_data_file_rewritten_in_place_rebuilds_its_stages(local_run):
    suite, _, source, out = local_run
    _claims(source, flip=True)
    man = _run(suite, out)
    assert not man["stages_reused"] and len(man["stages_built"]) == 3


def test_deleted_or_truncated_stage_file_is_rebuilt(local_run, caplog):
    suite, _, _, out = local_run
    job = json.loads(next((out / "jobs").glob("*.json")).read_text())
    metrics = out / "runs" / job["stages"]["eval"] / "metrics.json"
    metrics.write_text(metrics.read_text()[:10])  # truncated
    man = _run(suite, out)
    assert man["stages_built"] == [job["stages"]["eval"]] and "metrics.json has" in caplog.text
    (out / "runs" / job["stages"]["proxies"] / "metrics.json").unlink()
    man = _run(suite, out)
    assert man["stages_built"] == [job["stages"]["proxies"]] and "metrics.json is missing" in caplog.text
    assert pd.read_csv(out / "leaderboard.csv")["decorrelation"].notna().all()


def test_stages_record_their_machine_and_a_mixed_folder_says_so(local_run):
    suite, _, _, out = local_run
    man = json.loads((out / "manifest.json").read_text())
    assert man["mixed_machines"] is False and man["stage_machines"][0]["torch"]
    job = json.loads(next((out / "jobs").glob("*.json")).read_text())
    record = out / "runs" / job["stages"]["eval"] / "stage.json"
    rec = json.loads(record.read_text())
    rec["machine"] = {**rec["machine"], "cpu": "another CPU"}  # as if computed elsewhere and copied in
    record.write_text(json.dumps(rec))
    man = _run(suite, out)
    assert man["mixed_machines"] is True and {m["cpu"] for m in man["stage_machines"]} >= {"another CPU"}


def test_diverged_training_fails_its_job_only_and_the_report_says_partial(tmp_path, capsys):
    from bench.report import write_report

    suite = tmp_path / "diverge.toml"
    suite.write_text(
        'seeds = [0]\n[model]\nid = "tiny:llama"\n[hook]\nlayer = 1\n[proxies]\nn_texts = 4\n'
        "[tasks.sycophancy]\nn_train = 4\nn_eval = 6\nn_eval_unseen = 2\n[methods.base]\n[methods.dpo]\n"
        "lr = 1e30\nwarmup = 0\nmax_steps = 3\nbatch_size = 2\neval_every = 1\ncurve_pairs = 2\ncurve_prompts = 2\n"
        "max_length = 160\nmax_prompt_length = 120\n"
        "[sae]\nexpansion = 2\nk = 8\ntraining_tokens = 512\nbatch_size = 64\nmax_texts = 16\ncontext_length = 128\n"
        "[sae.eval]\nms_null_draws = 19\n"
    )
    out = tmp_path / "out"
    assert main(["run", "suite", str(suite), "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "sycophancy__dpo__s0: " in err and "training diverged" in err and "at step" in err
    board = pd.read_csv(out / "leaderboard.csv")
    assert board["method"].tolist() == ["base"]  # the other job still ran and has its row
    failure = json.loads(next((out / "failures").glob("*__sycophancy__dpo__s0.json")).read_text())
    assert "train:" in failure["error"]
    assert "**Partial results:** 1 of the 2 jobs" in write_report(out).read_text()


def test_two_models_in_one_folder_keep_both_rows(local_run):
    """Job records are keyed by model too: a second suite's rows do not replace the first's."""
    suite, model, _, out = local_run
    other = suite.with_name("tiny.toml")
    other.write_text(suite.read_text().replace(f'id = "{model}"', 'id = "tiny:llama"'))
    _run(other, out)
    board = pd.read_csv(out / "leaderboard.csv")
    assert sorted(board["model"]) == sorted([str(model), "tiny:llama"]) and len(list((out / "jobs").iterdir())) == 2


def test_a_legacy_job_record_is_replaced_not_shadowing(local_run):
    """A folder written before records carried the model (``jobs/<task>__<method>__s<seed>.json``) stays
    readable, and re-running replaces that record rather than keeping two of one job."""
    suite, _, _, out = local_run
    (rec,) = list((out / "jobs").glob("*.json"))
    legacy = out / "jobs" / (json.loads(rec.read_text())["job"] + ".json")
    rec.rename(legacy)
    assert len(pd.read_csv(_leaderboard(out))) == 1
    _run(suite, out)
    assert not legacy.exists() and len(list((out / "jobs").iterdir())) == 1


def _leaderboard(out: Path) -> Path:
    assert main(["leaderboard", str(out)]) == 0
    return out / "leaderboard.csv"


@pytest.mark.parametrize(
    "toml,match",
    [
        ('[hook]\nmodule = "mlp.nope"\n', "hook.module = 'mlp.nope'.*has no module"),
        ("[sae]\nexpansion = 2\nk = 1000\n", r"\[sae\] does not fit.*k = 1000 must be smaller than d_sae = 256"),
    ],
)
def test_settings_that_need_the_model_shape_fail_before_any_stage(tmp_path, capsys, toml, match):
    import re

    suite = tmp_path / "s.toml"
    suite.write_text(f'seeds = [0]\n[model]\nid = "tiny:llama"\n{toml}[tasks.sycophancy]\n[methods.base]\n')
    for extra in (["--dry-run"], []):
        assert main(["run", "suite", str(suite), "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), err
    assert not (tmp_path / "o" / "runs").exists()  # nothing ran


def test_custom_data_errors_state_the_real_reason(tmp_path):
    from bench.core.errors import TaskDataError
    from tasks import TASKS

    one_label = tmp_path / "claims.jsonl"
    pd.DataFrame([{"claim": f"{a} is larger than 1.", "truth": True} for a in range(2, 30)]).to_json(
        one_label, orient="records", lines=True
    )
    cfg = TASKS["sycophancy"].config_cls(
        source=str(one_label), columns={"text": "claim", "label": "truth"}, n_train=4, n_eval=4, n_eval_unseen=0
    )
    with pytest.raises(TaskDataError, match="same true answer"):
        TASKS["sycophancy"]().build(cfg, None, None, 0)
    dups = tmp_path / "tox.csv"
    pd.DataFrame({"prompt": ["you are all such stupid people here"] * 20}).to_csv(dups, index=False)
    cfg = TASKS["toxicity"].config_cls(source=str(dups), n_train=4, n_eval=4)
    with pytest.raises(TaskDataError, match="only 1 usable distinct prompts.*19 repeat an earlier prompt"):
        TASKS["toxicity"]().build(cfg, None, None, 0)


def test_a_damaged_array_or_sae_names_the_file_and_never_suggests_an_unsafe_load(tmp_path):
    from bench.core.errors import StoreError
    from bench.core.io import load_npy
    from saes.score import load_sae

    bad = tmp_path / "acts.npy"
    bad.write_bytes(b"garbage, not an array" * 10)
    with pytest.raises(StoreError, match=f"{bad} is not a readable numpy array") as e:
        load_npy(bad)
    assert "allow_pickle" not in str(e.value)
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = tmp_path / "sae"
    StandardSAE(StandardSAEConfig(d_in=4, d_sae=8)).save_model(sae)
    load_sae(sae)  # sound
    weights = sae / "sae_weights.safetensors"
    weights.write_bytes(b"\xff" * weights.stat().st_size)
    with pytest.raises(StoreError, match=f"SAE in {sae} cannot be loaded"):
        load_sae(sae)
