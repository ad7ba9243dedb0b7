"""Self-contained HTML pages: inline CSS, PNG plots embedded as base64, no scripts."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:2px solid #ddd}
.sub{color:#666;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:1em 0}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 16px;min-width:150px}
.card .v{font-size:1.5em;font-weight:600}.card .k{color:#666;font-size:.9em}
.pass{background:#e8f6ec;border:1px solid #7c7;padding:10px 16px;border-radius:8px}
.fail{background:#fdecea;border:1px solid #e77;padding:10px 16px;border-radius:8px}
.warn{color:#8a5a00}
table{border-collapse:collapse;margin:.6em 0}td,th{padding:4px 10px;border-bottom:1px solid #eee;
text-align:left}th{background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
.note{color:#555;font-size:.92em}
"""


def esc(text: object) -> str:
    return html.escape(str(text))


def img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def cards(items: Iterable[tuple[str, str]]) -> str:
    """Big numbers with a caption: (value, caption)."""
    body = "".join(
        f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
        for v, k in items
    )
    return f'<div class="cards">{body}</div>'


def table(head: Sequence[str], rows: Iterable[Sequence[object]], numeric: set[int] = set()) -> str:  # noqa: B006
    h = "".join(f"<th>{esc(x)}</th>" for x in head)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{h}</tr>{body}</table>"


def page(title: str, subtitle: str, body: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p>'
        + "\n".join(body)
        + "</body></html>\n"
    )


def fmt(x: float | None, digits: int = 3, unit: str = "") -> str:
    """A number for people: 3 significant digits, thousands separated; '-' when unknown."""
    if x is None or x != x:
        return "-"
    ax = abs(x)
    if ax >= 1000:
        s = f"{x:,.0f}"
    elif ax >= 100:
        s = f"{x:.0f}"
    elif ax >= 1:
        s = f"{x:.{max(digits - 1, 0)}g}" if ax < 10 else f"{x:.1f}"
    elif ax == 0:
        s = "0"
    else:
        s = f"{x:.{digits}g}"
    return f"{s} {unit}".rstrip()
