"""Markdown and HTML from one list of blocks (``bench/report.py`` builds the blocks), so both hold the
same content. Inline markup is `code` and **bold** only; the HTML is self-contained apart from images.
"""

from __future__ import annotations

import html
import numbers
import re
from dataclasses import dataclass
from typing import Any, cast

import pandas as pd


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str
    """Inline markup: `code` and **bold** only."""


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    src: str
    alt: str


Block = Heading | Para | Bullets | Table | Image


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        match b:
            case Heading(level, text):
                out.append(f"{'#' * level} {text}")
            case Para(text):
                out.append(text)
            case Bullets(items):
                out.append("\n".join(f"- {i}" for i in items))
            case Table(header, rows):
                cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
                lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
                out.append("\n".join(lines + ["| " + " | ".join(map(cell, r)) + " |" for r in rows]))
            case Image(src, alt):
                out.append(f"![{alt}]({src})")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    s = html.escape(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;"
    "padding:.25em .6em;text-align:left}th{background:#f3f3f3}img{max-width:100%;height:auto}"
    "code{background:#f3f3f3;padding:0 .2em}"
)


def to_html(blocks: list[Block], title: str) -> str:
    body = []
    for b in blocks:
        match b:
            case Heading(level, text):
                body.append(f"<h{level}>{_inline(text)}</h{level}>")
            case Para(text):
                body.append(f"<p>{_inline(text)}</p>")
            case Bullets(items):
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            case Table(header, rows):
                head = "".join(f"<th>{_inline(str(h))}</th>" for h in header)
                trs = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            case Image(src, alt):
                body.append(f'<img src="{html.escape(src)}" alt="{html.escape(alt)}">')
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def fmt(v: Any) -> str:
    """A number rounded for reading (3 decimals, 1 from 100 up; integers as they are); '–' if missing."""
    if v is None or (isinstance(v, numbers.Real) and pd.isna(v)):
        return "–"
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return str(int(v))
    if isinstance(v, numbers.Real):
        return f"{v:.1f}" if abs(cast(float, v)) >= 100 else f"{v:.3f}"
    return str(v)
