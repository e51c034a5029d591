"""CLI: one clear error line (no traceback) for bad suites, tasks, methods and models."""

import textwrap

import pytest

from bench.cli import main


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # exactly one line, no traceback
    return err[0]


def _suite(tmp_path, body: str):
    p = tmp_path / "s.toml"
    p.write_text(textwrap.dedent(body))
    return str(p)


BASE = """
[model]
id = "tiny:llama"
[tasks.sycophancy]
[methods.base]
"""


def test_nonexistent_suite(capsys):
    assert main(["run", "suite", "nonexistent"]) == 2
    line = _err_line(capsys)
    assert "nonexistent" in line and "smoke" in line


@pytest.mark.parametrize(
    "body, needle",
    [
        (BASE + "bogus = 1\n", "bogus"),
        (BASE.replace("[model]", "[model]\ncolour = 'red'"), "colour"),
        (BASE.replace("[tasks.sycophancy]", "[tasks.astrology]"), "astrology"),
        (BASE.replace("[methods.base]", "[methods.rlhf]"), "rlhf"),
        (BASE + "[methods.dpo]\nbeta = -1\n", "beta"),
        ("[model\n", "malformed TOML"),
    ],
)
def test_bad_suite_names_the_key(tmp_path, capsys, body, needle):
    assert main(["run", "suite", _suite(tmp_path, body), "--out", str(tmp_path / "o")]) == 2
    assert needle in _err_line(capsys)


def test_unloadable_model_is_one_line(tmp_path, capsys):
    path = _suite(tmp_path, BASE.replace('"tiny:llama"', f'"{tmp_path}/no-such-model"'))
    assert main(["run", "suite", path, "--out", str(tmp_path / "o")]) == 2
    line = _err_line(capsys)
    assert "no-such-model" in line and "does not exist" in line


def test_offline_hub_id_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _suite(tmp_path, BASE.replace('"tiny:llama"', '"someone/not-downloaded-model"'))
    assert main(["run", "suite", path, "--out", str(tmp_path / "o")]) == 2
    line = _err_line(capsys)
    assert "someone/not-downloaded-model" in line and "local" in line


@pytest.mark.parametrize("what", ["suites", "tasks", "methods", "models"])
def test_list(capsys, what):
    assert main(["list", what]) == 0
    out = capsys.readouterr().out
    expected = {"suites": "smoke", "tasks": "toxicity", "methods": "decpo", "models": "tiny:llama"}[what]
    assert expected in out


def test_help_on_every_command(capsys):
    for argv in (
        ["--help"],
        ["run", "suite", "--help"],
        ["list", "--help"],
        ["leaderboard", "--help"],
        ["data", "show", "--help"],
        ["show-feature", "--help"],
        ["report", "--help"],
        ["perf", "--help"],
        ["schema", "--help"],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "usage" in capsys.readouterr().out
