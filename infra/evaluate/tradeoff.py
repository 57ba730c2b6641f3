"""The sparsity/accuracy trade-off of one task, as data and as a picture.

`figure_data` turns a task's seed table (summary.seed_frame) into everything the figure shows:
per split (dev, test) and cost (non-zero parameters, CPU latency, zipped size) one point per
row with its spread over seeds, the Pareto front, the teacher line, the gate and the
champions. `draw` only draws that data, so tests check the data and never pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with this module
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SPLITS = ("dev", "test")
TEACHER = "teacher"


@dataclass(frozen=True)
class Point:
    """One grid row on one panel: its cost and metric, means over seeds with their spread."""

    series: str  # method (options): one series per method and options
    target: float  # the sparsity budget
    cost: float
    cost_std: float  # NaN for a single seed
    metric: float
    metric_std: float


@dataclass(frozen=True)
class Panel:
    split: str  # dev | test
    cost: str  # the seed table's cost column: nonzero_params_m, latency_ms_b<B>, zipped_mb
    points: tuple[Point, ...]
    front: tuple[Point, ...]  # the Pareto front, by increasing cost
    teacher: float  # the teacher's metric: the reference line
    gate: float  # teacher - max_drop: promotion reads it on dev; on test it is shown for scale
    champions: tuple[tuple[str, Point], ...]  # (alias, the point of the row holding its model)


@dataclass(frozen=True)
class FigureData:
    task: str
    metric: str  # the gate metric without its split, e.g. accuracy
    panels: tuple[Panel, ...]  # the dev panels, then the test panels, costs in the same order


def pareto_front(points: Sequence[Point]) -> tuple[Point, ...]:
    """The points no other point dominates (metric at least as high at a cost at most as high,
    and strictly better in one), by increasing cost. Equal points dominate neither: both stay."""
    def dominated(p: Point) -> bool:
        return any(q.cost <= p.cost and q.metric >= p.metric and (q.cost < p.cost or q.metric > p.metric)
                   for q in points)

    return tuple(sorted((p for p in points if not dominated(p)), key=lambda p: (p.cost, -p.metric)))


def cost_columns(table: pd.DataFrame) -> list[str]:
    """The costs the table holds, in the figure's column order."""
    latency = sorted(c.removesuffix("_mean") for c in table.columns
                     if c.startswith("latency_ms_b") and c.endswith("_mean"))
    return [c for c in ("nonzero_params_m", *latency, "zipped_mb") if f"{c}_mean" in table.columns]


def _panel(table: pd.DataFrame, split: str, cost: str, max_drop: float) -> Panel:
    points, champions = [], []
    for _, row in table.iterrows():
        point = Point(row["series"], float(row["target"]), float(row[f"{cost}_mean"]),
                      float(row[f"{cost}_std"]), float(row[f"{split}_mean"]), float(row[f"{split}_std"]))
        if math.isnan(point.cost) or math.isnan(point.metric):
            continue
        points.append(point)
        champions += [(alias, point) for alias in str(row["aliases"]).split(",") if alias]
    teacher = table.loc[table["method"] == TEACHER, f"{split}_mean"]
    reference = float(teacher.iloc[0]) if len(teacher) else math.nan
    # "champion" first, then the budgets' champions in budget order
    champions.sort(key=lambda pair: (pair[0] != "champion", pair[0]))
    return Panel(split, cost, tuple(points), pareto_front(points), reference, reference - max_drop,
                 tuple(champions))


def figure_data(table: pd.DataFrame, max_drop: float) -> FigureData:
    """What the trade-off figure of one task shows, from that task's seed table."""
    costs = cost_columns(table)
    panels = tuple(_panel(table, split, cost, max_drop) for split in SPLITS for cost in costs)
    return FigureData(str(table["task"].iloc[0]), str(table["metric"].iloc[0]), panels)


def cost_label(cost: str) -> str:
    if cost.startswith("latency_ms_b"):
        return f"CPU latency at batch {cost.removeprefix('latency_ms_b')} (ms)"
    return {"nonzero_params_m": "non-zero parameters (M)", "zipped_mb": "compressed (zipped) size (MB)"}[cost]


def _spread(values: Sequence[float]) -> list[float]:
    return [0.0 if math.isnan(v) else v for v in values]  # one seed: no error bar


def _draw_panel(ax: Axes, panel: Panel, metric: str, colors: dict[str, str]) -> None:
    for series, color in colors.items():
        pts = sorted((p for p in panel.points if p.series == series), key=lambda p: p.cost)
        if pts:
            ax.errorbar([p.cost for p in pts], [p.metric for p in pts],
                        xerr=_spread([p.cost_std for p in pts]), yerr=_spread([p.metric_std for p in pts]),
                        fmt="s" if series == TEACHER else "o-", color=color, capsize=3, label=series,
                        alpha=0.9)
    if panel.front:
        ax.plot([p.cost for p in panel.front], [p.metric for p in panel.front], ls=":", color="black",
                marker="o", mfc="none", ms=12, lw=1.2, label="Pareto front")
    if not math.isnan(panel.teacher):
        ax.axhline(panel.teacher, color="black", ls="--", lw=1, label="teacher's level")
        low, high = ax.get_ylim()
        ax.axhspan(min(low, panel.gate), panel.gate, color="tab:red", alpha=0.08,
                   label="below the gate (teacher - max_drop)")
        ax.set_ylim(low, high)
    for alias, p in panel.champions:
        ax.scatter([p.cost], [p.metric], marker="*", s=220, color="gold", edgecolors="black", zorder=5)
        ax.annotate(alias, (p.cost, p.metric), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel(cost_label(panel.cost))
    ax.set_ylabel(f"{panel.split} {metric}")
    ax.grid(alpha=0.3)


def draw(data: FigureData) -> Figure:
    """The figure of `data`: a row of panels per split, one column per cost (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = max(1, len(data.panels) // len(SPLITS))
    figure = Figure(figsize=(4.6 * columns, 8.0), layout="constrained")
    FigureCanvasAgg(figure)  # renders off-screen, whatever backend the process has
    axes = figure.subplots(len(SPLITS), columns, squeeze=False)
    names = list(dict.fromkeys(p.series for panel in data.panels for p in panel.points))
    colors = {name: "black" if name == TEACHER else f"C{i}" for i, name in enumerate(names)}
    for ax, panel in zip(axes.flat, data.panels):
        _draw_panel(ax, panel, data.metric, colors)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    figure.suptitle(f"{data.task}: {data.metric} against cost (mean ± sd over seeds; "
                    "stars: registry champions)")
    return figure
