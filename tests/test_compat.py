"""The library workarounds in bench/core/compat.py still find what they patch (a moved symbol fails here)."""

import importlib.metadata as md

import pytest

from bench.core import compat


def test_patched_symbols_exist_in_the_installed_libraries():
    compat.check_trl()
    compat.check_sae_lens()


@pytest.mark.parametrize("dist", sorted(compat.TESTED))
def test_installed_versions_are_the_tested_ones(dist):
    assert md.version(dist).startswith(compat.TESTED[dist] + "."), (
        f"{dist} {md.version(dist)} is installed but the patches were tested on {compat.TESTED[dist]}.x: "
        "re-run the tests that cover bench/core/compat.py and update TESTED"
    )


def test_a_missing_symbol_is_a_loud_error(monkeypatch):
    import trl.trainer.utils as u

    monkeypatch.delattr(u, "_use_triton")
    with pytest.raises(compat.CompatError, match="_use_triton"):
        with compat.labelled_positions_only():
            pass
