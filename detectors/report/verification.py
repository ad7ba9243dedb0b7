"""The savings verification page (``report.html`` of ``recp savings``)."""

from __future__ import annotations

from ..caltrack_hourly import CaltrackHourlyModel
from ..savings import Savings
from . import plots
from .html import cards, esc, fmt, img, page, table


def savings_html(s: Savings) -> str:
    """Self-contained HTML: verdict, headline numbers, plots, fit statistics, model."""
    m = s.meter
    unit = m.unit
    st = s.model.stats
    v = s.verdict
    cur = s.currency
    u90 = s.halfwidth.get(0.90)
    headline = [
        (fmt(s.avoided, unit=unit), "avoided consumption in the reporting period"),
        (
            "-" if u90 is None else f"± {fmt(u90, unit=unit)}",
            "90 % uncertainty (ASHRAE Guideline 14)",
        ),
        ("-" if s.fraction is None else f"{100 * s.fraction:.1f} %", "of the adjusted baseline"),
        (fmt(m.cost(s.avoided), unit=cur), "money saved"),
        (fmt(m.co2_kg(s.avoided), unit="kg CO2"), "CO2 avoided"),
    ]
    if v.passed:
        box = (
            '<div class="pass"><b>Meets ASHRAE Guideline 14.</b> The baseline model and the '
            "data are good enough to state these savings.</div>"
        )
    else:
        items = "".join(f"<li>{esc(r)}</li>" for r in v.reasons)
        box = (
            '<div class="fail"><b>Does not meet ASHRAE Guideline 14</b>; treat the figure as '
            f"indicative only:<ul>{items}</ul></div>"
        )
    if v.warnings:
        box += "".join(f'<p class="warn">Note: {esc(w)}</p>' for w in v.warnings)
    unc_rows = []
    for c, u in s.halfwidth.items():
        f = s.fsu(c)
        unc_rows.append(
            [
                f"{round(100 * c)} %",
                "-" if u is None else f"{fmt(s.avoided - u)} .. {fmt(s.avoided + u)} {unit}",
                "-" if u is None else fmt(u, unit=unit),
                "-" if f is None else f"{100 * f:.1f} %",
            ]
        )
    th = s.thresholds

    def ok(flag: bool) -> str:
        return "ok" if flag else "FAILS"

    cv, nmbe = st.cv_rmse_pct, st.nmbe_pct
    fsu68 = s.fsu(0.68)
    stat_rows = [
        ["CV(RMSE)", fmt(cv, unit="%"), f"<= {th.cv_rmse_max_pct:g} %",
         ok(cv is not None and cv <= th.cv_rmse_max_pct)],
        ["NMBE", fmt(nmbe, unit="%") if nmbe is None or abs(nmbe) > 1e-3 else "0 %",
         f"within ±{th.nmbe_max_pct:g} %",
         ok(nmbe is None or abs(nmbe) <= th.nmbe_max_pct)],
        ["R²", fmt(st.r2), "(information)", ""],
        ["savings uncertainty at 68 %", "-" if fsu68 is None else f"{100 * fsu68:.1f} %",
         f"< {100 * th.fsu68_max:.0f} % of savings",
         ok(fsu68 is not None and fsu68 <= th.fsu68_max)],
        ["baseline data coverage", f"{100 * s.baseline_coverage:.1f} %",
         f">= {100 * th.min_coverage:.0f} %", ok(s.baseline_coverage >= th.min_coverage)],
        ["reporting data coverage", f"{100 * s.reporting_coverage:.1f} %",
         f">= {100 * th.min_coverage:.0f} %", ok(s.reporting_coverage >= th.min_coverage)],
        ["baseline length", f"{s.baseline.days:.1f} days", f">= {th.min_baseline_days:g} days",
         ok(s.baseline.days >= th.min_baseline_days)],
        ["intervals fitted (n)", str(st.n), "", ""],
        ["model parameters (p)", str(st.n_params), "", ""],
        ["lag-1 autocorrelation of residuals", fmt(st.residual_lag1), "", ""],
        ["independent intervals (n')", fmt(s.n_eff), "", ""],
    ]  # fmt: skip
    model = s.model
    terms = [
        ["method", s.method_description],
        ["time of week", f"{model.time_of_week}, {model.interval_s // 60} min intervals, "
                         f"{sum(a is not None for a in model.intercepts)} levels"],
    ]  # fmt: skip
    if isinstance(model, CaltrackHourlyModel):
        terms = [["method", s.method_description]]
        terms += [
            [f"month model: {mm.describe().split(':', 1)[0]}", mm.describe().split(": ", 1)[1]]
            for mm in model.months
            if mm is not None
        ]
    if model.production_coef is not None:
        terms.append(["per unit produced", f"{model.production_coef:.4g} {unit}"])
    if model.running_coef is not None:
        terms.append(["while producing", f"{model.running_coef:.4g} {unit} per interval"])
    if model.heating_coef is not None:
        below = f"below {model.heating_balance_c:g} °C"
        terms.append(["heating", f"{model.heating_coef:.4g} {unit} per K {below}"])
    if model.cooling_coef is not None:
        above = f"above {model.cooling_balance_c:g} °C"
        terms.append(["cooling", f"{model.cooling_coef:.4g} {unit} per K {above}"])
    norm = (
        f"<p>Normalised savings (both periods' models run on the baseline period's conditions): "
        f"<b>{fmt(s.normalised, unit=unit)}</b> ({fmt(m.cost(s.normalised), unit=cur)}). "
        f'<span class="note">{esc(s.normalised_note)}</span></p>'
        if s.normalised is not None
        else f'<p class="note">Normalised savings: not available ({esc(s.normalised_note)}).</p>'
    )
    body = [
        box,
        cards(headline),
        "<h2>Actual against the adjusted baseline</h2>",
        "<p>The baseline model learns how the meter depends on the time of week, the weather "
        "and production during the baseline period, and is then run with the reporting "
        "period's weather and production: the consumption had nothing changed. The shaded "
        "area is what was avoided.</p>",
        img(plots.savings_overview(s), "actual vs adjusted baseline"),
        "<h2>Cumulative savings</h2>",
        img(plots.savings_cumulative(s), "cumulative savings with uncertainty band"),
        table(["confidence", "savings range", "± uncertainty", "fractional (FSU)"], unc_rows),
        norm,
        "<h2>How well the model fits</h2>",
        img(plots.savings_residuals(s), "residuals in the baseline period"),
        table(["statistic", "value", "Guideline 14", "check"], stat_rows),
        "<h2>Baseline model</h2>",
        table(["term", "value"], terms),
        f'<p class="note">{esc(model.describe())}. Baseline {esc(s.baseline.label())}, '
        f"reporting {esc(s.reporting.label())} (UTC).</p>",
    ]
    title = f"Savings verification: {m.id}"
    sub = (
        f"{m.resource or 'meter'} in {unit}; baseline {s.baseline.local_label(s.timezone)}, "
        f"reporting {s.reporting.local_label(s.timezone)}; IPMVP adjusted baseline, "
        "ASHRAE Guideline 14-2014 statistics"
    )
    return page(title, sub, body)
