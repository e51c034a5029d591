"""``bench validate --quick``: every metric's controls run and pass, and a failing control fails the command."""

import re

import pandas as pd
import pytest

from bench.cli import main
from bench.core import controls
from bench.validate import load_controls


def test_quick_validation_passes_for_every_metric(tmp_path, capsys):
    assert main(["validate", "--quick", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "validation.csv")
    assert list(table.columns[:6]) == ["metric", "kind", "control", "expected", "observed", "pass"]
    assert table["pass"].all(), table[~table["pass"]]
    for metric in (
        "sae_frac_interpretable",
        "sae_frac_decorrelated",
        "sae_explained_variance",
        "sae_ce_score",
        "sae_probe_top1",
        "decorrelation",
        "pref_acc",
        "syco_rate",
        "tox_rate",
        "align_score",
        "positivity_gain",
        "relatedness",
        "no_opinion_acc",
        "mean_tox_prob",
        "sae_dead_frac",
        "sae_probe_top5",
        "acc_user_right",
        "acc_user_wrong",
        "syco_flip_rate",
        "contrarian_rate",
        "degenerate_rate",
        "sae_transfer_top_jaccard",
        "weight_proxy",
        "act_variance",
        "sae_drift_frac",
        "sae_drift_decoder",
        "sae_drift_encoder",
        "acts_heldout_leaks",
        "acts_heldout_twins",
    ):
        assert set(table.loc[table.metric == metric, "kind"]) == {"negative", "positive"}, metric
    for task in ("toxicity", "reframing", "sycophancy"):  # align_score is a different function per task
        rows = table[(table.metric == "align_score") & table.control.str.startswith(f"{task}:")]
        assert set(rows["kind"]) == {"negative", "positive"}, task
    dup = table[table.control.str.contains("duplicated tokens")]
    assert len(dup) == 4 and (dup.observed <= 0.08).all()
    assert "sae_frac_interpretable" in capsys.readouterr().out


def test_a_failing_control_fails_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(controls, "CONTROLS", [])
    monkeypatch.setattr("bench.validate.CONTROLS", controls.CONTROLS)
    monkeypatch.setattr("bench.validate.load_controls", lambda: None)
    controls.control("made_up", "negative", "always 1", expect="= 0", check=lambda v: v == 0)(lambda ctx: 1.0)
    assert main(["validate", "--quick", "--out", str(tmp_path)]) == 1
    assert not pd.read_csv(tmp_path / "validation.csv")["pass"].any()


_NUM = r"[−-]?\d+(?:\.\d+)?(?:e[−-]?\d+)?"


def _num(s: str) -> float:
    return float(s.replace("−", "-"))


def _probes(expect: str) -> list[tuple[float, bool]] | None:
    """Values just inside and just outside the first bound that ``expect`` states (``≥ x``, ``≤ x``, ``|…| ≤ x``
    on both sides of 0, ``a–b``, ``x ± t``, ``= x`` with its stated tolerance ``(to t)``/``(± t)``, or a bare
    ``x``), with whether a check that reads the same bound must accept them. Later bounds in the text (e.g. the
    values observed, in parentheses) are information, not checks, and are not probed."""
    found = []
    for kind, pattern in (("pm", rf"({_NUM})\s*±\s*({_NUM})"), ("range", rf"({_NUM})\s*–\s*({_NUM})")):
        found += [(m.start(), kind, m) for m in re.finditer(pattern, expect)]
    found += [(m.start(), "cmp", m) for m in re.finditer(rf"([≥≤<>])\s*({_NUM})", expect)]
    found += [(m.start(), "eq", m) for m in re.finditer(rf"(?:^|=)\s*({_NUM})\s*(?:\(|$)", expect)]
    if not found:
        return None
    _, kind, m = min(found, key=lambda f: f[0])
    if kind == "cmp":
        x, low = _num(m.group(2)), m.group(1) in "≤<"
        d = 1e-6 + 1e-4 * abs(x)
        out = [(x + d, not low), (x - d, low)]
        if low and re.search(r"\|[^|]+\|\s*$", expect[: m.start()]):  # |…| ≤ x: the negative side too
            out += [(-(x - d), True), (-(x + d), False)]
        return out
    if kind == "eq":
        x = _num(m.group(1))
        tol = re.match(rf"\s*\((?:to|±)\s*({_NUM})", expect[m.end(1) :])
        t = _num(tol.group(1)) if tol else 1e-3 * max(1.0, abs(x))  # no tolerance stated: x itself must pass
        inside = [(x + t / 2, True), (x - t / 2, True)] if tol else []
        return [(x, True), *inside, (x + 2 * t, False), (x - 2 * t, False)]
    a, b = _num(m.group(1)), _num(m.group(2))
    lo, hi = (a - b, a + b) if kind == "pm" else (a, b)
    d = 1e-6 + 1e-4 * (hi - lo)
    eps = 1e-9 * max(1.0, abs(lo), abs(hi))
    return [(lo + eps, True), (hi - eps, True), (lo - d, False), (hi + d, False)]


def test_every_controls_check_accepts_what_its_expected_text_states():
    """``validation.csv`` publishes ``expected`` beside ``pass``; ``pass`` comes from ``check``. A control whose
    text says "≥ 0.9" but whose check tests ``> 0.8`` would publish a false claim: probe each check just
    inside and just outside the bound its text states."""
    load_controls()
    unread = [c.expect for c in controls.CONTROLS if _probes(c.expect) is None]
    assert not unread, f"state the expected value as ≥ x, ≤ x, a–b, x ± t or = x: {unread}"
    wrong = [
        (c.metric, c.name, c.expect, v)
        for c in controls.CONTROLS
        for v, accept in _probes(c.expect) or []
        if bool(c.check(v)) != accept
    ]
    assert not wrong, wrong
    assert len(controls.CONTROLS) >= 90


def test_the_expectation_reader_reads_each_form():
    def rejects(expect: str, check) -> bool:  # some probe disagrees with this (wrong) check
        return any(bool(check(v)) != accept for v, accept in _probes(expect))

    assert _probes("≥ 0.9 (0.95 seen)") == [(pytest.approx(0.900091), True), (pytest.approx(0.899909), False)]
    assert [a for _, a in _probes("rate 0.02–0.08 (nominal 0.05)")] == [True, True, False, False]
    assert _probes("Φ(¼) = 0.599 ± 0.03")[0][0] == pytest.approx(0.569, abs=1e-5)
    assert _probes("(N − 1)/N = 63/64 = 0.984375")[0] == (0.984375, True)
    assert _probes("no number") is None
    assert _probes("0.5 (to 1e-9)")[:3] == [(0.5, True), (0.5 + 5e-10, True), (0.5 - 5e-10, True)]
    assert [a for _, a in _probes("> 0")] == [True, False]
    assert rejects("|margin| ≤ 0.005", lambda v: v <= 0.005)  # forgot abs()
    assert not rejects("|margin| ≤ 0.005", lambda v: abs(v) <= 0.005)
    assert rejects("≥ 0.9", lambda v: v >= 0.905) and rejects("≥ 0.9", lambda v: v > 0.8)
    assert rejects("= 0 (to 1e-9)", lambda v: abs(v) < 0.04) and not rejects("= 0 (to 1e-9)", lambda v: abs(v) < 1e-9)
    assert rejects("(N − 1)/N = 0.984", lambda v: abs(v - 63 / 64) < 1e-9)  # the old, rounded text
