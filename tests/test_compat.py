"""The library workarounds in bench/core/compat.py still find what they patch (a moved symbol fails here)."""

import importlib.metadata as md

import pytest

from bench.core import compat


def test_patched_symbols_exist_in_the_installed_libraries():
    compat.check_trl()
    compat.check_sae_lens()
    compat.check_transformers_gguf()


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


def test_gguf_parsed_once_shares_readers_and_name_maps_inside_the_block_only(monkeypatch):
    import gguf

    built: list[str] = []

    class CountingReader:
        def __init__(self, path):
            built.append(path)

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    with compat.gguf_parsed_once():
        first = gguf.GGUFReader("a.gguf")
        assert gguf.GGUFReader("a.gguf") is first
        gguf.GGUFReader("b.gguf")
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert built == ["a.gguf", "b.gguf"]
    assert gguf.GGUFReader is CountingReader
    assert not hasattr(gguf.get_tensor_name_map, "cache_info")
    gguf.GGUFReader("a.gguf")
    assert built == ["a.gguf", "b.gguf", "a.gguf"]


def test_gguf_patch_is_a_loud_error_when_transformers_stops_looking_it_up_in_gguf(monkeypatch):
    import inspect

    real = inspect.getsource
    monkeypatch.setattr(inspect, "getsource", lambda obj: real(obj).replace("from gguf import", "from x import"))
    with pytest.raises(compat.CompatError, match="call-time gguf"):
        with compat.gguf_parsed_once():
            pass
