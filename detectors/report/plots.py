"""Matplotlib figures for the reports, rendered to PNG bytes (Agg backend, no display).

Written for engineers reading a printed page: few lines, labelled axes with units, dates
on the time axis, the story in the title.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arrays import FloatArray, IntArray

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..savings import Savings

ACTUAL = "#1f4e79"
MODEL = "#e07b00"
SAVED = "#2e8b57"
BAND = "#9fd5b4"
GREY = "#888888"
RESOURCE_COLOURS = {
    "electricity": "#f2b701",
    "water": "#3a8fd9",
    "steam": "#c0504d",
    "gas": "#7f6fb2",
    "heat": "#e3773d",
}


def _figure(w: float = 10.0, h: float = 4.0) -> Figure:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    return fig


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _dates(t_s: Any) -> Any:
    """UTC epoch seconds -> numpy datetime64 (matplotlib plots them as UTC dates)."""
    return np.asarray(t_s, dtype=np.int64).astype("datetime64[s]")


def _date(t_s: float) -> Any:
    return np.datetime64(int(t_s), "s")


def _date_axis(ax: object) -> None:
    import matplotlib.dates as mdates

    loc = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(loc)  # type: ignore[attr-defined]
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))  # type: ignore[attr-defined]


def daily(t_s: IntArray, values: FloatArray, interval_s: int) -> tuple[IntArray, FloatArray]:
    """Sum per UTC day (NaN when any interval of the day is unknown); daily data as is."""
    if interval_s >= 86400 or t_s.size == 0:
        return t_s, values
    day = t_s // 86400
    days, first, counts = np.unique(day, return_index=True, return_counts=True)
    finite = np.add.reduceat(np.isfinite(values).astype(np.int64), first)
    total = np.add.reduceat(np.nan_to_num(values), first)
    full = counts == 86400 // interval_s
    out = np.where((finite == counts) & full, total, np.nan)
    return days * 86400, out


# --------------------------------------------------------------------------- savings


def _per(interval_s: int) -> str:
    return {3600: "hour", 86400: "day"}.get(interval_s, f"{interval_s // 60} min")


def savings_overview(s: Savings) -> bytes:
    """Actual vs baseline model (fitted in the baseline period, adjusted in the reporting)."""
    unit = s.meter.unit
    step = s.model.interval_s
    fig = _figure(10, 4.2)
    ax = fig.add_subplot()
    td, actual = daily(s.t_s, s.actual, step)
    _, model = daily(s.t_s, s.adjusted, step)
    x = _dates(td + (43200 if step < 86400 else 0))
    ax.axvspan(_date(s.baseline.start_s), _date(s.baseline.end_s),
               color="#eef3f8", label="baseline period")  # fmt: skip
    ax.plot(x, actual, color=ACTUAL, lw=1.6, marker="o", ms=3, label="actual")
    ax.plot(x, model, color=MODEL, lw=1.6, ls="--", label="baseline model (adjusted)")
    rep = x >= _date(s.reporting.start_s)
    ok = rep & np.isfinite(actual) & np.isfinite(model)
    if ok.any():
        ax.fill_between(x[ok], actual[ok], model[ok],
                        where=model[ok] >= actual[ok], color=SAVED, alpha=0.25,
                        label="avoided consumption", interpolate=True)  # fmt: skip
    ax.axvline(_date(s.reporting.start_s), color=GREY, lw=1)
    ax.annotate("intervention", (_date(s.reporting.start_s), 1.0),
                xycoords=("data", "axes fraction"), xytext=(4, -14),
                textcoords="offset points", color=GREY)  # fmt: skip
    ax.set_ylabel(f"{unit} per day")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{s.meter.id}: actual consumption against the baseline model")
    ax.legend(loc="lower left", ncols=4, fontsize=9, frameon=False)
    _date_axis(ax)
    ax.grid(alpha=0.3)
    return png(fig)


def savings_cumulative(s: Savings) -> bytes:
    """Savings summed over the reporting period with its 90 % uncertainty band."""
    unit = s.meter.unit
    t = s.t_s[s.reporting_mask] + s.model.interval_s
    fig = _figure(10, 3.8)
    ax = fig.add_subplot()
    x = _dates(t)
    c = s.cumulative
    band = s.cumulative_halfwidth
    if np.isfinite(band).any():
        ax.fill_between(x, c - band, c + band, color=BAND, alpha=0.6,
                        label="90 % uncertainty (ASHRAE Guideline 14)")  # fmt: skip
    ax.plot(x, c, color=SAVED, lw=2, label="cumulative avoided consumption")
    ax.axhline(0, color=GREY, lw=0.8)
    if c.size:
        ax.annotate(f"{c[-1]:,.4g} {unit}", (x[-1], c[-1]), xytext=(-8, 8),
                    textcoords="offset points", ha="right", fontweight="bold")  # fmt: skip
    ax.set_ylabel(f"{unit} saved since the intervention")
    ax.set_title("Cumulative savings in the reporting period")
    ax.legend(loc="upper left", fontsize=9, frameon=False)
    _date_axis(ax)
    ax.grid(alpha=0.3)
    return png(fig)


def savings_residuals(s: Savings) -> bytes:
    """Baseline-period residuals over time and against the model's value."""
    unit = s.meter.unit
    fit = s.fitted_mask
    resid = s.actual[fit] - s.adjusted[fit]
    fig = _figure(10, 3.6)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2.2, 1])
    ax1.plot(_dates(s.t_s[fit]), resid, ".", ms=2.5, color=ACTUAL, alpha=0.5)
    ax1.axhline(0, color=MODEL, lw=1)
    ax1.set_title("Baseline period: actual - model")
    ax1.set_ylabel(f"{unit} per {_per(s.model.interval_s)}")
    _date_axis(ax1)
    ax1.grid(alpha=0.3)
    ax2.plot(s.adjusted[fit], resid, ".", ms=2.5, color=ACTUAL, alpha=0.5)
    ax2.axhline(0, color=MODEL, lw=1)
    ax2.set_xlabel(f"model, {unit} per {_per(s.model.interval_s)}")
    ax2.set_title("against the model's value")
    ax2.grid(alpha=0.3)
    return png(fig)


# --------------------------------------------------------------------------- assessment


def hbars(
    labels: Sequence[str],
    values: Sequence[float],
    colours: Sequence[str],
    *,
    title: str,
    xlabel: str,
    annotations: Sequence[str] | None = None,
) -> bytes:
    """Horizontal bars, largest on top, each with its value written beside it."""
    n = len(labels)
    fig = _figure(10, max(2.2, 0.42 * n + 1.2))
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    ax.barh(y, values, color=colours)
    ax.set_yticks(y, labels)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    top = max([v for v in values if v == v] + [0.0])
    for yi, v, text in zip(y, values, annotations or [f"{v:,.0f}" for v in values], strict=True):
        ax.text(v + 0.01 * top, yi, text, va="center", fontsize=9)
    ax.set_xlim(0, top * 1.3 if top > 0 else 1)
    ax.grid(axis="x", alpha=0.3)
    return png(fig)


def resource_daily(
    t_s: IntArray,
    series: dict[str, FloatArray],
    base_per_day: dict[str, float],
    unit: str,
    resource: str,
) -> bytes:
    """Daily consumption of each meter of one resource, with its base load as a dotted line."""
    fig = _figure(10, 3.4)
    ax = fig.add_subplot()
    x = _dates(t_s + 43200)
    cmap = ["#1f4e79", "#e07b00", "#2e8b57", "#8e44ad", "#c0392b", "#7f8c8d"]
    for i, (name, v) in enumerate(series.items()):
        colour = cmap[i % len(cmap)]
        ax.plot(x, v, marker="o", ms=3, lw=1.5, color=colour, label=name)
        base = base_per_day.get(name)
        if base is not None:
            ax.axhline(base, color=colour, lw=1, ls=":")
    ax.set_ylabel(f"{unit} per day")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{resource.capitalize()}: daily consumption (dotted: base load)")
    ax.legend(fontsize=9, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _date_axis(ax)
    ax.grid(alpha=0.3)
    return png(fig)


def specific_trend(
    t_s: IntArray, values: dict[str, FloatArray], units: dict[str, str], produced_unit: str
) -> bytes:
    """Weekly specific consumption per meter (indexed: the period's mean = 100)."""
    fig = _figure(10, 3.8)
    ax = fig.add_subplot()
    x = _dates(t_s + 3 * 86400 + 43200)  # mid-week
    import matplotlib

    cmap = [matplotlib.colors.to_hex(matplotlib.colormaps["tab10"](i)) for i in range(10)]
    for i, (name, v) in enumerate(values.items()):
        ok = np.isfinite(v)
        if not ok.any():
            continue
        ref = float(np.mean(v[ok]))
        if ref <= 0:
            continue
        label = f"{name} ({units[name]}/{produced_unit})"
        ax.plot(x[ok], 100 * v[ok] / ref, marker="o", lw=1.6, color=cmap[i % len(cmap)],
                label=label)  # fmt: skip
    ax.axhline(100, color=GREY, lw=0.8)
    ax.set_ylabel("period mean = 100")
    ax.set_title("Specific consumption per unit produced, week by week (rising = worse)")
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _date_axis(ax)
    ax.grid(alpha=0.3)
    return png(fig)
