"""Task data sources: local files with a column mapping, hf ids, embedded files, and their errors."""

import json

import pandas as pd
import pytest

from tasks import TASKS
from tasks.sources import TaskDataError, clean_text, load_rows, read_embedded


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, ValueError)
    return msg


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_local_file_with_mapping(tmp_path, ext):
    df = pd.DataFrame({"text": ["first thought", "second thought", ""], "better": ["a", None, "c"]})
    path = tmp_path / f"rows.{ext}"
    {
        "csv": lambda: df.to_csv(path, index=False),
        "jsonl": lambda: df.to_json(path, orient="records", lines=True),
        "parquet": lambda: df.to_parquet(path),
    }[ext]()
    rows = load_rows("reframing", str(path), {"prompt": "text", "chosen": "better"}, ["prompt"], ["chosen"])
    assert list(rows.columns) == ["prompt", "chosen"]
    assert rows["prompt"].tolist() == ["first thought", "second thought"]  # the empty required field is dropped


def test_missing_column_lists_present_columns(tmp_path):
    path = tmp_path / "rows.csv"
    pd.DataFrame({"a": [1], "b": [2]}).to_csv(path, index=False)
    with pytest.raises(TaskDataError) as err:
        load_rows("toxicity", str(path), {"prompt": "text"}, ["prompt"])
    msg = _one_line(err)
    assert "toxicity" in msg and "'text'" in msg and "columns present: a, b" in msg and "columns = {prompt" in msg


def test_missing_optional_column_is_an_error_only_when_mapped(tmp_path):
    path = tmp_path / "rows.csv"
    pd.DataFrame({"prompt": ["x y z"]}).to_csv(path, index=False)
    assert "chosen" not in load_rows("reframing", str(path), {}, ["prompt"], ["chosen"]).columns
    with pytest.raises(TaskDataError, match="no column 'human'"):
        load_rows("reframing", str(path), {"chosen": "human"}, ["prompt"], ["chosen"])


def test_unknown_field_in_mapping(tmp_path):
    path = tmp_path / "rows.csv"
    pd.DataFrame({"prompt": ["x"]}).to_csv(path, index=False)
    with pytest.raises(TaskDataError) as err:
        load_rows("reframing", str(path), {"thought": "prompt"}, ["prompt"], ["chosen"])
    assert "unknown field" in _one_line(err) and "prompt, chosen" in str(err.value)


def test_empty_file_and_header_only(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TaskDataError) as err:
        load_rows("sycophancy", str(empty), {}, ["claim", "label"])
    assert "empty" in _one_line(err) and "sycophancy" in str(err.value)
    header = tmp_path / "header.csv"
    header.write_text("claim,label\n")
    with pytest.raises(TaskDataError, match="has no rows"):
        load_rows("sycophancy", str(header), {}, ["claim", "label"])


def test_unknown_source_and_missing_file(tmp_path):
    with pytest.raises(TaskDataError) as err:
        load_rows("toxicity", str(tmp_path / "rows.txt"), {}, ["prompt"])
    assert "unknown source" in _one_line(err) and ".jsonl, .csv, .parquet" in str(err.value)
    with pytest.raises(TaskDataError, match="does not exist"):
        load_rows("toxicity", str(tmp_path / "nope.csv"), {}, ["prompt"])


def test_hf_id_while_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(TaskDataError) as err:
        load_rows("sycophancy", "hf:no-such-user/no-such-dataset:train", {}, ["claim", "label"])
    msg = _one_line(err)
    assert "offline" in msg and "hf:no-such-user/no-such-dataset:train" in msg and "fix:" in msg


def test_task_build_reports_source_errors(tmp_path):
    """The error surfaces from build before any model is touched."""
    path = tmp_path / "claims.jsonl"
    path.write_text(json.dumps({"statement": "The sun is a star.", "truth": "maybe"}) + "\n")
    cls = TASKS["sycophancy"]
    cfg = cls.config_cls(source=str(path), columns={"text": "statement", "label": "truth"})
    with pytest.raises(TaskDataError, match="label 'maybe'"):
        cls().build(cfg, None, None, seed=0)
    cfg = TASKS["toxicity"].config_cls(source=str(path))
    with pytest.raises(TaskDataError, match="columns present: statement, truth"):
        TASKS["toxicity"]().build(cfg, None, None, seed=0)


def test_embedded_files_and_cleaning():
    df = read_embedded("toxicity", "107_hate_offensive")
    assert {"prompt", "target"} <= set(df.columns) and len(df) > 1000
    with pytest.raises(TaskDataError, match="missing"):
        read_embedded("toxicity", "999_nope")
    assert clean_text("RT @bob: I &amp; you http://t.co/x  ok") == "I & you ok"
