"""The feature browser: its data from the smoke run, and the pages opened in a real headless Chromium."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.browse.catalog import catalog
from bench.cli import main

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
needs_browser = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("MONOBENCH_REQUIRE_BROWSER") != "1",
    reason="no chromium (CI installs it and sets MONOBENCH_REQUIRE_BROWSER=1)",
)


@pytest.fixture(scope="module")
def site(smoke_run):
    assert main(["browse", str(smoke_run), "--max-latents", "12"]) == 0
    return smoke_run / "browse"


def _data(site: Path, name: str) -> dict:
    text = (site / "data" / f"{name}.js").read_text()
    return json.loads(text[text.index("=", text.index("]")) + 1 : -2])


def test_every_sae_is_indexed_and_a_latent_page_holds_ranked_contexts(site, smoke_run):
    index = _data(site, "index")
    assert {s["id"] for s in index["saes"]} == {e.key for e in catalog(smoke_run)}
    base = next(s for s in index["saes"] if s["kind"] == "base")
    assert 1 <= len(base["exported"]) <= 12
    page = _data(site, f"{base['id']}/latent-{base['exported'][0]}")
    assert page["top"], "the latent page holds no contexts"
    values = [c["value"] for c in page["top"]]
    assert values == sorted(values, reverse=True) and len({c["doc"] for c in page["top"]}) == len(values)
    for c in page["top"]:
        assert c["tokens"][c["at"]][1] == c["value"]  # the boxed token carries the context's activation
    models = [p["model"] for p in page["side_by_side"]]
    assert models[0] == "base model" and any(m.startswith("dpo ") for m in models)
    table = _data(site, f"{base['id']}/table")
    assert len(table["rows"]) == base["d_sae"] and table["columns"][:2] == ["latent", "density"]


def _chromium(url: str, *extra: str) -> str:
    out = subprocess.run(
        [
            CHROMIUM or "chromium",
            *FLAGS,
            f"--user-data-dir={ARTIFACTS / 'profile'}",
            "--virtual-time-budget=8000",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout


@needs_browser
def test_the_site_renders_offline_in_headless_chromium(site, smoke_run):
    ARTIFACTS.mkdir(exist_ok=True)
    index = _data(site, "index")
    dom = _chromium((site / "index.html").as_uri(), "--dump-dom")
    body = dom[dom.index('id="sae-table"') :]
    assert len(re.findall(r"<tr>", body)) == len(index["saes"]) + 1  # header + one row per SAE
    base = next(s for s in index["saes"] if s["kind"] == "base")
    url = f"{(site / 'latent.html').as_uri()}?sae={base['id']}&latent={base['exported'][0]}"
    dom = _chromium(url, "--dump-dom")
    assert 'id="top-contexts"' in dom and re.search(r'class="tok[^"]*lit', dom), "no highlighted tokens"
    side = dom[dom.index('id="side-by-side"') :]
    assert side.count('class="panel"') == len(_data(site, f"{base['id']}/latent-{base['exported'][0]}")["side_by_side"])
    assert 'class="error"' not in dom
    for name, page in (("index", (site / "index.html").as_uri()), ("latent", url)):
        shot = ARTIFACTS / f"browse-{name}.png"
        _chromium(page, "--window-size=1300,1400", f"--screenshot={shot}")
        assert shot.is_file() and shot.stat().st_size > 10_000
