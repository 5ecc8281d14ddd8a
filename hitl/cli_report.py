"""`hitl report --out DIR`: the dashboard's figures as files, from the database in settings.

Writes `kpis.json` (exactly what `GET /v1/metrics/dashboard` returns), one PNG per chart, and
`report.html`, a single self-contained file (the PNGs embedded) to mail or archive. Read-only on the data:
the same `serving.kpis` functions as the dashboard compute every figure.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from hitl.context import database_error, missing_sqlite_file, settings_from
from hitl.settings import Settings
from serving import kpis
from serving.store import Store

err_console = Console(stderr=True)
PNG_DPI = 110
COLORS = ["#2f6fdf", "#e08a1e", "#2b8a3e", "#8e44ad", "#c8372d", "#16a2b8", "#7f8c8d", "#b7950b"]


class ReportError(RuntimeError):
    """The report cannot be written (no database, unwritable folder)."""


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{seconds / size:.1f} {unit}" if size > 1 else f"{seconds:.0f} s"
    return f"{seconds / 86400:.1f} d"


# ------------------------------------------------------------------------------------------------ charts
def _save(draw: Callable[[Axes], None], path: Path, title: str, height: float = 3.2) -> None:
    figure = Figure(figsize=(7.5, height), dpi=PNG_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    draw(axes)
    axes.set_title(title, fontsize=11, loc="left")
    axes.grid(axis="y", color="#e6e8ec")
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    figure.tight_layout()
    figure.savefig(path, format="png")


def _charts(board: kpis.DashboardKpis, out: Path) -> dict[str, Path]:
    """The charts that have data; name -> PNG path."""
    written: dict[str, Path] = {}
    esc = board.escalation
    reasons = sorted(esc.by_reason)
    if esc.over_time:

        def over_time(ax: Axes) -> None:
            xs = [p.window_start.strftime("%m-%d %H:%M") for p in esc.over_time]
            ax.plot(xs, [p.rate for p in esc.over_time], marker="o", lw=2.5, color=COLORS[0], label="all")
            for i, reason in enumerate(reasons, start=1):
                rates = [p.by_reason.get(reason, 0) / p.predicted for p in esc.over_time]
                ax.plot(xs, rates, marker=".", lw=1.2, color=COLORS[i % len(COLORS)], label=reason)
            ax.set_ylim(0, 1)
            ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
            ax.legend(fontsize=8, ncols=3)
            ax.tick_params(axis="x", labelsize=8)

        written["escalation_over_time"] = out / "escalation_over_time.png"
        _save(over_time, written["escalation_over_time"], "Escalation rate over time, by reason")

        def by_version(ax: Axes) -> None:
            names = [v.model_version.rsplit(":", 1)[-1] for v in esc.by_version]
            ax.bar(names, [v.rate for v in esc.by_version], color=COLORS[0])
            ax.set_ylim(0, 1)
            ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")

        written["escalation_by_version"] = out / "escalation_by_version.png"
        _save(by_version, written["escalation_by_version"], "Escalation rate per model version")
    spot = board.spot_checks
    if spot.reviewed and spot.interval is not None:

        def spot_checks(ax: Axes) -> None:
            groups = [("all", spot.accuracy or 0.0, spot.interval)] + [
                (v.model_version.rsplit(":", 1)[-1], v.accuracy or 0.0, v.interval) for v in spot.by_version
            ]
            names = [g[0] for g in groups]
            values = [g[1] for g in groups]
            low = [v - (g[2].low if g[2] else v) for v, g in zip(values, groups, strict=True)]
            high = [(g[2].high if g[2] else v) - v for v, g in zip(values, groups, strict=True)]
            ax.bar(names, values, yerr=[low, high], capsize=5, color=COLORS[2])
            ax.axhline(spot.target, color="#c8372d", ls="--", label=f"target {_pct(spot.target)}")
            ax.set_ylim(0, 1.05)
            ax.legend(fontsize=8, loc="lower right")

        written["spot_checks"] = out / "spot_checks.png"
        _save(spot_checks, written["spot_checks"], "Realised accuracy of auto-accepts (spot checks)")
    days = board.reviews.per_day
    if days:

        def per_day(ax: Axes) -> None:
            names = [d.day.isoformat() for d in days]
            approved = [d.approved for d in days]
            ax.bar(names, approved, color=COLORS[0], label="approved")
            ax.bar(names, [d.corrected for d in days], bottom=approved, color=COLORS[1], label="corrected")
            ax.legend(fontsize=8)
            ax.tick_params(axis="x", labelsize=8)

        written["reviews_per_day"] = out / "reviews_per_day.png"
        _save(per_day, written["reviews_per_day"], "Reviews per day")
    queue = board.queue
    if queue.open:

        def by_age(ax: Axes) -> None:
            ax.bar(list(queue.by_age), list(queue.by_age.values()), color=COLORS[0])

        written["queue_age"] = out / "queue_age.png"
        _save(by_age, written["queue_age"], f"Open review queue by age ({queue.open} open)")
    segments = [s for s in board.segments.segments if s.reviewed]
    if segments:

        def by_segment(ax: Axes) -> None:
            names = [f"{s.dimension}: {s.segment}" for s in segments]
            colors = ["#c8372d" if s.flagged else COLORS[0] for s in segments]
            ax.barh(names, [s.correction_rate or 0.0 for s in segments], color=colors)
            ax.invert_yaxis()
            ax.set_xlim(0, 1)
            ax.tick_params(axis="y", labelsize=7)
            ax.xaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")

        written["segments"] = out / "segments.png"
        height = max(3.2, 0.22 * len(segments))
        _save(by_segment, written["segments"], "Correction rate per segment (red: flagged)", height)
    return written


# -------------------------------------------------------------------------------------------------- html
def _table(headers: list[str], rows: list[list[str]], flagged: list[bool] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="flagged"' if flagged and flagged[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_html(board: kpis.DashboardKpis, charts: dict[str, Path], settings: Settings) -> str:
    esc, spot, cost = board.escalation, board.spot_checks, board.cost
    tiles = [
        ("Escalation rate", _pct(esc.rate), f"{esc.escalated} of {esc.predicted} predictions"),
        (
            "Auto-accept accuracy",
            _pct(spot.accuracy),
            f"{_pct(spot.interval.low)}-{_pct(spot.interval.high)} vs target {_pct(spot.target)} "
            f"({spot.status})"
            if spot.interval
            else f"no reviewed spot check (target {_pct(spot.target)})",
        ),
        ("Open review queue", str(board.queue.open), f"oldest {_duration(board.queue.oldest_age_s)}"),
        (
            "Median handling time",
            _duration(board.reviews.median_lead_time_s),
            f"{board.reviews.reviews} reviews",
        ),
        (
            "Throughput",
            f"{board.throughput.predictions_per_hour:.1f} items/h",
            f"{board.throughput.reviews_per_hour:.1f} reviews/h",
        ),
        (
            "Cost per item",
            "n/a" if cost.cost_per_item is None else f"{cost.cost_per_item:.4f} {cost.currency}",
            ""
            if cost.projected_cost_per_item is None
            else f"{cost.projected_cost_per_item:.4f} at today's rate",
        ),
    ]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>hitl report</title><style>",
        "body{font:14px/1.45 system-ui,sans-serif;color:#1d2330;margin:24px;max-width:1000px}"
        ".tiles{display:grid;grid-template-columns:repeat(3,1fr);gap:10px}"
        ".tile{border:1px solid #d9dde4;border-radius:6px;padding:8px 12px}.v{font-size:22px;font-weight:600}"
        ".s{color:#5d6675;font-size:12px}.empty{background:#fff8e1;border:1px solid #f0d58c;padding:8px 12px}"
        "table{border-collapse:collapse;width:100%;font-size:13px}td,th{border-bottom:1px solid #d9dde4;"
        "padding:3px 6px;text-align:left}tr.flagged td{background:#fdecea}img{max-width:100%}",
        "</style></head><body>",
        "<h1>Product categories: humans in the loop</h1>",
        f"<p class='s'>Figures as of {board.generated_at:%Y-%m-%d %H:%M} UTC.</p>",
    ]
    parts += [f"<p class='empty' data-key='{e.key}'>{html.escape(e.message)}</p>" for e in board.empty]
    parts.append("<div class='tiles'>")
    parts += [
        f"<div class='tile'><div class='s'>{html.escape(a)}</div><div class='v'>{html.escape(b)}</div>"
        f"<div class='s'>{html.escape(c)}</div></div>"
        for a, b, c in tiles
    ]
    parts.append("</div>")
    for name, path in charts.items():
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(
            f"<h2>{html.escape(name.replace('_', ' '))}</h2>"
            f"<img alt='{name}' src='data:image/png;base64,{encoded}'>"
        )
    segments = board.segments.segments
    parts.append(
        f"<h2>Segments</h2><p class='s'>Fisher exact per segment vs the rest, Holm-adjusted, level "
        f"{board.segments.significance}; segments with fewer than {board.segments.min_segment_size} reviewed "
        "items are not tested.</p>"
    )
    parts.append(
        _table(
            [
                "dimension",
                "segment",
                "items",
                "escalation rate",
                "reviewed",
                "correction rate",
                "rest",
                "adj. p",
                "flag",
            ],
            [
                [
                    s.dimension,
                    s.segment,
                    str(s.items),
                    _pct(s.escalation_rate),
                    str(s.reviewed),
                    _pct(s.correction_rate),
                    _pct(s.rest_correction_rate),
                    "not tested" if s.p_adjusted is None else f"{s.p_adjusted:.4g}",
                    f"{s.direction} error rate" if s.flagged else "",
                ]
                for s in segments
            ],
            [s.flagged for s in segments],
        )
    )
    parts.append("<h2>Model versions</h2>")
    parts.append(
        _table(
            ["when", "event", "version", "reason", "MLflow"],
            [
                [f"{e.at:%Y-%m-%d %H:%M}", e.kind, e.model_version, e.reason or "", e.mlflow_url or ""]
                for e in board.timeline
            ],
        )
        if board.timeline
        else "<p>No model version yet.</p>"
    )
    parts.append(
        f"<p class='s'>Cost model: {settings.dashboard.human_cost_per_review} {cost.currency} per review + "
        f"{settings.dashboard.compute_cost_per_item} per prediction.</p></body></html>"
    )
    return "".join(parts)


def write_report(settings: Settings, out: Path, *, now: datetime | None = None) -> dict[str, Path]:
    """Compute the KPIs from the database in `settings` and write the report into `out`."""
    missing = missing_sqlite_file(settings.database_url)
    if missing is not None:
        raise ReportError(
            f"no database at {missing}: start the serving app (`hitl serve` or `make up`) first, "
            "or point serving.database_url at it"
        )
    import serving.sessions  # noqa: F401  (its session table is part of the schema)

    store = Store(settings.database_url)
    try:
        store.create_all()  # a database from an older version may lack a table; adding one changes no data
        board = kpis.dashboard(store, settings, now)
    except SQLAlchemyError as exc:  # unreachable, or a file that is no database; the URL is never said
        raise ReportError(f"could not read the database: {database_error(exc)}") from None
    finally:
        store.close()
    try:  # only once there is something to write: a failed report leaves no empty folder
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {out}: {exc.strerror}") from exc
    files = {"kpis.json": out / "kpis.json"}
    files["kpis.json"].write_text(board.model_dump_json(indent=2) + "\n", encoding="utf-8")
    import matplotlib

    # Brands and categories are anyone's text: "$...$" in one would be read as a formula (a crash on
    # "$\\foo$", garbled "$5 off $10").
    with matplotlib.rc_context({"text.parse_math": False}):
        try:
            charts = _charts(board, out)
        except (ValueError, OSError) as exc:
            raise ReportError(f"could not draw the charts: {type(exc).__name__}: {exc}") from exc
    files.update({f"{name}.png": path for name, path in charts.items()})
    files["report.html"] = out / "report.html"
    files["report.html"].write_text(render_html(board, charts, settings), encoding="utf-8")
    return files


def report(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="folder for report.html, the PNG charts and kpis.json")
    ],
) -> None:
    """Write the product owners' report (HTML + PNG + JSON) from the serving database."""
    settings = settings_from(ctx)
    with err_console.status("computing KPIs and drawing charts..."):
        try:
            files = write_report(settings, out)
        except ReportError as exc:
            err_console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
    for name, path in files.items():
        err_console.print(f"wrote {name}: {path}")
