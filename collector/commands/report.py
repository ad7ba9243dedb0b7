"""``recp report``: the RECP assessment report of a site and period."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

NAME = "report"
HELP = "RECP assessment report of a site: consumption, base load, losses, savings potential"
DESCRIPTION = """\
The in-plant assessment of a site and period: per resource (electricity, water, steam) the
consumption, cost and CO2, the base-load share, the consumption per unit produced and its
weekly trend, every loss the anomaly detectors find (spikes, base-load rises, level shifts,
drift) with its excess, cost and CO2 ranked by money, and the total savings potential.

--site-dir is a folder in the layout of recp simulate --csv: one <meter>.csv per meter and
meters.json (resource, counter column, price, CO2 factor); production and outdoor
temperature come from its production and weather meters. --store reads the same from the
embedded store file that recp detect writes with influx.url sqlite:FILE (recp demo's
store.sqlite): the readings as stored, prices from the stored consumption.

Writes OUT/report.html (self-contained, plots embedded) and OUT/assessment.json, and
OUT/report.pdf when Chromium or wkhtmltopdf is installed (--no-pdf: not even then).

examples:
  recp simulate -c edge_config/plants/demo.yaml --csv out/demo
  recp report --site-dir out/demo --from 2026-01-05 --to 2026-02-03 --out report/
  recp report --store recp-demo/store.sqlite --timezone Europe/Vienna --out report/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--site-dir",
        type=Path,
        metavar="DIR",
        help="folder of meter CSV files with meters.json (recp simulate --csv)",
    )
    src.add_argument(
        "--store",
        type=Path,
        metavar="FILE",
        help="the embedded store recp detect wrote (influx.url sqlite:FILE; recp demo's "
        "store.sqlite): its stored readings",
    )
    p.add_argument("--site", help="with --store: the site (default: the only one stored)")
    p.add_argument(
        "--from",
        dest="start",
        metavar="DATE",
        help="first day or UTC date-time (default: start of the data)",
    )
    p.add_argument(
        "--to",
        dest="end",
        metavar="DATE",
        help="last day (included) or UTC date-time (default: end of the data)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--timezone",
        help="local time zone of the site (dates, days, nights; default: meters.json's or UTC)",
    )
    p.add_argument("--currency", default="EUR", help="currency of the prices (default EUR)")
    p.add_argument(
        "--pdf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write report.pdf when Chromium or wkhtmltopdf is installed (default: yes)",
    )


CONVERTERS = ("chromium", "chromium-browser", "google-chrome", "wkhtmltopdf")


def _pdf(html: Path, pdf: Path) -> tuple[str | None, str]:
    """Convert with the first converter that works: (its name, "") or (None, why not)."""
    import tempfile

    tried = []
    pdf.unlink(missing_ok=True)  # a PDF of an earlier run must not pass for this one
    for exe in CONVERTERS:
        path = shutil.which(exe)
        if not path:
            continue
        with tempfile.TemporaryDirectory(prefix="recp-pdf-") as profile:
            if exe == "wkhtmltopdf":
                cmd = [path, "--quiet", "--enable-local-file-access", str(html), str(pdf)]
            else:
                cmd = [path, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                       "--disable-background-networking", "--disable-component-update",
                       "--disable-sync", f"--user-data-dir={profile}",
                       "--no-pdf-header-footer", f"--print-to-pdf={pdf.resolve()}",
                       html.resolve().as_uri()]  # fmt: skip
            try:
                done = subprocess.run(cmd, capture_output=True, timeout=180, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                tried.append(f"{exe}: {type(exc).__name__}")
                continue
        if done.returncode == 0 and pdf.exists() and pdf.stat().st_size > 0:
            return exe, ""
        tried.append(f"{exe} exited with {done.returncode}")
    if not tried:
        return None, "no PDF: no converter found (install chromium or wkhtmltopdf); " \
                     "the HTML prints well from a browser too"
    return None, "no PDF: " + "; ".join(tried)


def _from_store(args: argparse.Namespace, folder: Path) -> tuple[int | None, int | None]:
    """Export the store's readings of one site into ``folder`` (the CSV layout)."""
    from detectors.store import Store, export_site_dir

    from ..configfile import ConfigError, Problem

    try:
        store = Store(args.store)
    except FileNotFoundError as exc:
        raise ConfigError([Problem(str(args.store), None, "", str(exc))]) from None
    with store:
        sites = store.sites()
        site = args.site or (sites[0] if len(sites) == 1 else None)
        if site is None or site not in sites:
            have = ", ".join(sites) or "no readings at all"
            raise ConfigError([Problem(str(args.store), None, "", "name the site with --site "
                                       f"(it holds: {have})")])
        span = export_site_dir(store, site, folder, timezone=args.timezone)
    args.site_dir = folder
    return span.start_s, span.end_s


def run(args: argparse.Namespace) -> int:
    import tempfile

    if args.store is None:
        return _run_checked(args, None)
    with tempfile.TemporaryDirectory(prefix="recp-report-") as tmp:
        return _run_checked(args, _from_store(args, Path(tmp)))


def _run_checked(args: argparse.Namespace, span: tuple[int | None, int | None] | None) -> int:
    from detectors.csvinput import CsvInputError, load_manifest
    from detectors.savings import SavingsError, parse_local

    from ..configfile import ConfigError, Problem

    if args.timezone is None:
        try:
            man = load_manifest(args.site_dir)
        except CsvInputError as exc:
            raise ConfigError([Problem(exc.file, exc.line, "", exc.message)]) from None
        args.timezone = (man.timezone if man else None) or "UTC"
    try:
        start = parse_local(args.start, args.timezone) if args.start else None
        end = parse_local(args.end, args.timezone, end=True) if args.end else None
    except ValueError as exc:
        what = "--from/--to" if "zone" not in str(exc) else "--timezone"
        raise ConfigError([Problem(what, None, "", f"{exc}; use 2026-01-05 or "
                                   "2026-01-05T06:00:00Z")]) from None  # fmt: skip
    if span is not None:
        start = span[0] if start is None else start
        end = span[1] if end is None else end
    try:
        return _run(args, start, end)
    except CsvInputError as exc:
        raise ConfigError([Problem(exc.file, exc.line, "", exc.message)]) from None
    except SavingsError as exc:
        raise ConfigError([Problem(str(args.site_dir), None, "", str(exc))]) from None


def _run(args: argparse.Namespace, start: int | None, end: int | None) -> int:
    from detectors.csvinput import load_manifest
    from detectors.report.assessment import assess, assessment_dict, assessment_html
    from detectors.report.progress import Progress

    man = load_manifest(args.site_dir)
    n = 3 + (len(man.meters) if man else 0)
    with Progress(n, "report") as bar:
        a = assess(args.site_dir, start, end, timezone=args.timezone, currency=args.currency,
                   progress=bar.step)  # fmt: skip
        bar.note("plots")
        html = assessment_html(a)
        args.out.mkdir(parents=True, exist_ok=True)
        out = args.out / "report.html"
        out.write_text(html, encoding="utf-8")
        (args.out / "assessment.json").write_text(
            json.dumps(assessment_dict(a), indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
    cur = a.currency
    print(f"{a.site}: {len(a.meters)} meters, {len(a.events)} loss events, savings potential "
          f"{a.potential_cost:,.0f} {cur} in the period "
          f"({a.annualised_cost():,.0f} {cur}/year if the open losses continue)")  # fmt: skip
    for e in a.events[:5]:
        cost = "" if e.cost is None else f"{e.cost:,.0f} {cur}, "
        print(f"  {e.meter}: {e.type.value} from {e.start:%Y-%m-%d %H:%M}: {cost}"
              f"{e.excess:,.4g} {e.unit}")  # fmt: skip
    print(f"wrote {out} and {args.out / 'assessment.json'}")
    if args.pdf:
        used, why = _pdf(out, args.out / "report.pdf")
        print(f"wrote {args.out / 'report.pdf'} with {used}" if used else why)
    return 0
