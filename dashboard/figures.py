"""Plotly figure dicts for the overview's charts, from metric samples (no HTML, no plotly import).

The page sends them as JSON (`json_script`) and static/js/charts.js draws them with the
plotly.min.js the plotly package ships. The same colour per priority on every chart; axes say their
unit; hover shows exact values; reconciliation runs and resyncs are markers on every chart.
"""

from __future__ import annotations

from datetime import datetime

from sync.observe.counters import DRIFT_KINDS
from sync.observe.overview import Marker
from sync.observe.readings import PRIORITIES
from sync.observe.samples import Window, downsample

PRIORITY_COLOURS = {"high": "#d55e00", "medium": "#0072b2", "low": "#009e73"}  # Okabe-Ito: colour-blind safe
SERIES_COLOURS = ("#cc79a7", "#e69f00", "#56b4e9", "#999999", "#f0e442", "#000000", "#0072b2", "#d55e00")
MARKER_STYLE = {"reconciliation": ("diamond", "#7b3fa0"), "resync": ("triangle-down", "#8a6d00"),
                "canary": ("x", "#c21f2a")}
MARKER_NAMES = {"canary": "search canary missed"}  # the others: "<kind> started"
NO_SAMPLES = "No samples in this range yet"
GAP = 2.5  # a pause longer than this many sampling steps breaks a line instead of bridging it


def _text(value: str) -> str:
    """Text from the data (an entity's uid in a marker, an error or drift kind), as Plotly should show
    it: Plotly reads <b>, <a href> and friends in any label as markup, and drops tags it does not know,
    so a hostile uid would be a link or vanish. Escaped, Plotly shows the characters themselves."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _x(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S")


def _times(samples) -> tuple[list, list[int | None]]:
    """The x values, with a None (a break) after each gap, and for each x the index of its sample."""
    xs: list = []
    index: list[int | None] = []
    step = min((s.seconds for s in samples), default=15) or 15
    previous = None
    for i, sample in enumerate(samples):
        if previous is not None and (sample.at - previous).total_seconds() > GAP * step:
            xs.append(None)
            index.append(None)
        xs.append(_x(sample.at))
        index.append(i)
        previous = sample.at
    return xs, index


def _mode(xs: list) -> str:
    """Dots as well while there are few points (a fresh start, one rollup of a long range so far)."""
    return "lines" if sum(x is not None for x in xs) > 60 else "lines+markers"


def _series(samples, index, value) -> list:
    return [None if i is None else value(samples[i]) for i in index]


def _per_minute(count, seconds) -> float | None:
    return None if not seconds else round(count * 60.0 / seconds, 2)


def _layout(title: str, y_title: str, window: Window, markers: list[Marker], *, log: bool = False,
            barmode: str | None = None) -> dict:
    layout = {
        "title": {"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}},
        "xaxis": {"type": "date", "range": [_x(window.since), _x(window.until)]},  # UTC, as the caption says
        "yaxis": ({"title": {"text": y_title}, "type": "log", "dtick": 1} if log
                  else {"title": {"text": y_title}, "rangemode": "tozero"}),
        "yaxis2": {"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True},
        "legend": {"orientation": "h", "y": -0.16, "yanchor": "top"},
        "margin": {"l": 60, "r": 16, "t": 40, "b": 40},
        "hovermode": "x unified",
        "height": 300,
        "shapes": [{"type": "line", "xref": "x", "yref": "paper", "x0": _x(m.at), "x1": _x(m.at), "y0": 0, "y1": 1,
                    "line": {"width": 1, "dash": "dot", "color": MARKER_STYLE[m.kind][1]}} for m in markers],
    }
    if barmode:
        layout["barmode"] = barmode
    return layout


def _empty(figure: dict, text: str) -> dict:
    """Say in the chart why it is empty (UI.md: empty states say what would appear and why)."""
    figure["layout"]["annotations"] = [{"text": text, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                                        "showarrow": False, "font": {"size": 13}}]
    return figure


def _marker_traces(markers: list[Marker]) -> list[dict]:
    traces = []
    for kind, (symbol, colour) in MARKER_STYLE.items():
        mine = [m for m in markers if m.kind == kind]
        if mine:
            traces.append({"type": "scatter", "mode": "markers", "name": MARKER_NAMES.get(kind, f"{kind} started"),
                           "yaxis": "y2", "x": [_x(m.at) for m in mine], "y": [0.97] * len(mine),
                           "text": [_text(m.text) for m in mine], "hovertemplate": "%{text}<extra></extra>",
                           "cliponaxis": False,
                           "marker": {"symbol": symbol, "size": 9, "color": colour}})
    return traces


def lag(samples, window: Window, markers: list[Marker]) -> dict:
    """Lines with dots: an interval in which nothing of a priority was synced has no lag, and a
    value between two such gaps is a point a line alone would not draw."""
    xs, index = _times(samples)
    traces = []
    for p in PRIORITIES:
        for stat, dash in (("p95", "solid"), ("p50", "dot")):
            traces.append({
                "type": "scatter", "mode": "lines+markers", "marker": {"size": 4 if stat == "p95" else 3},
                "name": f"{p.upper()} {stat}", "legendgroup": p,
                "x": xs, "y": _series(samples, index, lambda s, p=p, stat=stat: s.data["lag"][p][stat]),
                "line": {"color": PRIORITY_COLOURS[p], "dash": dash, "width": 2 if stat == "p95" else 1},
                "connectgaps": False, "hovertemplate": "%{y:.2f} s",
            })
    return {"data": traces + _marker_traces(markers),
            "layout": _layout("Change-to-vector lag by priority", "seconds (log scale)", window, markers, log=True)}


def depth(samples, window: Window, markers: list[Marker]) -> dict:
    xs, index = _times(samples)
    traces = [{
        "type": "scatter", "mode": _mode(xs), "stackgroup": "depth", "name": p.upper(),
        "x": xs, "y": _series(samples, index, lambda s, p=p: round(sum(s.data["depth"][p].values()), 2)),
        "line": {"color": PRIORITY_COLOURS[p], "width": 1}, "hovertemplate": "%{y} events",
    } for p in PRIORITIES]
    return {"data": traces + _marker_traces(markers),
            "layout": _layout("Queue depth by priority (queued + in flight)", "events", window, markers)}


def throughput(samples, window: Window, markers: list[Marker]) -> dict:
    xs, index = _times(samples)
    lines = (("in (enqueued)", "events_in", "#0072b2", "solid"), ("out (synced)", "events_out", "#009e73", "solid"),
             ("chunks embedded", "embedded", "#999999", "dot"))
    traces = [{
        "type": "scatter", "mode": _mode(xs), "name": name, "x": xs,
        "y": _series(samples, index, lambda s, key=key: _per_minute(s.data.get(key, 0), s.seconds)),
        "line": {"color": colour, "dash": dash}, "hovertemplate": "%{y:.1f}/min",
    } for name, key, colour, dash in lines]
    return {"data": traces + _marker_traces(markers),
            "layout": _layout("Throughput in vs out", "per minute", window, markers)}


def errors(samples, window: Window, markers: list[Marker]) -> dict:
    xs, index = _times(samples)
    kinds = sorted({kind for s in samples for kind in s.data.get("errors", {})})
    series = [(f"error: {_text(kind)}", lambda s, kind=kind: s.data.get("errors", {}).get(kind, 0)) for kind in kinds]
    if any(s.data.get("dead_new") for s in samples):
        series.append(("dead-lettered", lambda s: s.data.get("dead_new", 0)))
    traces = [{
        "type": "bar", "name": name, "x": xs,
        "y": _series(samples, index, lambda s, value=value: _per_minute(value(s), s.seconds)),
        "marker": {"color": SERIES_COLOURS[n % len(SERIES_COLOURS)]}, "hovertemplate": "%{y:.2f}/min",
    } for n, (name, value) in enumerate(series)]
    figure = {"data": traces + _marker_traces(markers),
              "layout": _layout("Errors by kind", "per minute", window, markers, barmode="stack")}
    if series:
        return figure
    return _empty(figure, "No failed attempts in this range" if samples else NO_SAMPLES)


def drift(samples, window: Window, markers: list[Marker]) -> dict:
    """Each reconciliation run's findings, at the time it started (from the samples that saw it finish)."""
    runs: dict[int, tuple[str, dict]] = {}
    for sample in samples:
        run = sample.data.get("reconcile")
        if run and run["id"] not in runs and run["started_at"][:19] >= _x(window.since):
            runs[run["id"]] = (run["started_at"][:19], sample.data.get("drift", {}))
    ordered = sorted(runs.values())
    kinds = [k for k in DRIFT_KINDS if any(found.get(k) for _, found in ordered)]
    kinds += sorted({k for _, found in ordered for k, n in found.items() if n and k not in DRIFT_KINDS})
    traces = [{
        "type": "bar", "name": _text(kind.replace("_", " ")), "x": [at for at, _ in ordered],
        "y": [found.get(kind, 0) for _, found in ordered],
        "marker": {"color": SERIES_COLOURS[n % len(SERIES_COLOURS)]}, "hovertemplate": "%{y} differences",
    } for n, kind in enumerate(kinds)]
    figure = {"data": traces + _marker_traces(markers),
              "layout": _layout("Drift found by reconciliation, by kind", "differences", window, markers,
                                barmode="stack")}
    if kinds:
        return figure
    if not samples:  # a run may have finished, but no sample has seen it: say nothing about runs
        return _empty(figure, NO_SAMPLES)
    return _empty(figure, f"{len(ordered)} reconciliation{'s' if len(ordered) != 1 else ''} in this range found "
                          "no drift" if ordered else "No reconciliation finished in this range")


CHARTS = (("lag", lag), ("depth", depth), ("throughput", throughput), ("errors", errors), ("drift", drift))


def figures(samples, window: Window, markers: list[Marker]) -> dict[str, dict]:
    """Every chart of a range. The time series draw at most MAX_POINTS points (downsampled); drift
    reads every sample, so no reconciliation run is lost between two points."""
    points = downsample(samples)
    return {name: build(samples if name == "drift" else points, window, markers) for name, build in CHARTS}
