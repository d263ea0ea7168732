"""Plots of a run and an HTML page that shows them, generated from the run directory.

Everything is read from the store, so the report can be written for a finished run, a
running one or an interrupted one. Figures are drawn on their own `Figure` with the Agg
canvas, never through pyplot, so nothing leaks between calls or into a caller's plots.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evomerge.files import write_atomically
from evomerge.outputs.lineage import draw_lineage
from evomerge.outputs.route_plot import describe_route, route_of, save_route
from evomerge.outputs.text import Plot, render_html
from evomerge.recipe.candidate import NOISE, Gene
from evomerge.recipe.routing import INCLUDE
from evomerge.run.store import Evaluation, RunStore
from evomerge.searchers import Archive
from evomerge.searchers.qd import measure

FITNESS_PNG = "fitness.png"
PARAMETERS_PNG = "parameters.png"
TASKS_PNG = "tasks.png"
DOCUMENTS_PNG = "documents.png"
LINEAGE_PNG = "lineage.png"
ROUTE_PNG = "route.png"
MAP_PNG = "map.png"
REPORT_HTML = "report.html"
DPI = 120



def write_report(run_dir: Path) -> List[Path]:
    """PNG plots and an HTML page that shows them, written into the run directory; returns the paths written."""
    store = RunStore.open(run_dir)
    try:
        evaluations = store.evaluations.finished()
        standings = store.confirmations.standings()
        winner = standings[0] if standings else None
        genes = [Gene(**g) for g in store.meta("genes")]
        report = store.report("report")
        directory = store.directory
        plots = [plot_fitness(evaluations, winner, directory / FITNESS_PNG)]
        if winner is not None:
            plots.append(plot_parameters(winner, genes, directory / PARAMETERS_PNG))
            if any(g.parameter == INCLUDE for g in genes):
                plots.append(plot_route(winner, directory / ROUTE_PNG))
        if report is not None:
            plots.append(plot_tasks(report, directory / TASKS_PNG))
        if any(e.documents for e in evaluations):
            plots.append(plot_documents(evaluations, directory / DOCUMENTS_PNG))
        archive = store.archive.read()
        if archive is not None and archive.elites:
            plots.append(plot_map(archive, evaluations, (report or {}).get("map_parents", {}), directory / MAP_PNG))
        if winner is not None and any(e.parents for e in evaluations):
            plots.append(plot_lineage(evaluations, winner.id, directory / LINEAGE_PNG))
        page = directory / REPORT_HTML
        write_atomically(page, render_html(directory.name, store.meta("status"), report, plots))
    finally:
        store.close()
    return [p.path for p in plots] + [page]


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=DPI, metadata={"Software": None})
    write_atomically(path, image.getvalue())


def plot_fitness(evaluations: Sequence[Evaluation], winner: Optional[Evaluation], path: Path) -> Plot:
    """Every candidate's fitness in evaluation order, so progress and spread show at a glance."""
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    _shade_generations(axes, evaluations)
    ok = [e for e in evaluations if e.ok]
    failed = [e for e in evaluations if e.failed]
    raced = [e for e in evaluations if e.raced]
    axes.scatter([e.id for e in ok], [e.fitness for e in ok], s=22, color="tab:blue", alpha=0.7, label="candidate")
    if raced:
        axes.scatter([e.id for e in raced], [e.fitness for e in raced], s=22, facecolors="none",
                     edgecolors="tab:blue", alpha=0.7, label="raced (estimate)")
    best = best_so_far(evaluations)
    axes.plot([e.id for e in evaluations], best, drawstyle="steps-post", color="tab:orange", lw=2, label="best so far")
    if winner is not None:
        axes.scatter([winner.id], [winner.fitness], s=160, marker="*", color="gold", edgecolor="black",
                     zorder=3, label=f"winner #{winner.id}")
    if failed:
        bottom = min(e.fitness for e in ok) if ok else 0.0
        spread = (max(e.fitness for e in ok) - bottom) if ok else 1.0
        axes.scatter([e.id for e in failed], [bottom - 0.08 * (spread or 1.0)] * len(failed), marker="x",
                     color="tab:red", s=40, label="failed")
    axes.set_title(f"Fitness of {len(evaluations)} evaluations")
    axes.set_xlabel("evaluation # (grey bands: alternate generations)")
    axes.set_ylabel("fitness")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    _save(figure, path)
    return Plot(path, _fitness_caption(evaluations, best))


def plot_documents(evaluations: Sequence[Evaluation], path: Path) -> Plot:
    """Documents scored over the run, against scoring every candidate in full: what racing saved."""
    figure = Figure(figsize=(8, 4.0), layout="constrained")
    axes = figure.add_subplot()
    full = max(e.documents for e in evaluations if e.ok) if any(e.ok for e in evaluations) else 0
    ids = [e.id for e in evaluations]
    scored = np.cumsum([e.documents for e in evaluations])
    axes.plot(ids, scored, drawstyle="steps-post", color="tab:blue", lw=2, label="documents scored")
    if full:
        axes.plot(ids, full * np.arange(1, len(ids) + 1), ls="--", color="0.5", label="every candidate in full")
    raced = [e for e in evaluations if e.raced]
    axes.set_title(f"Documents scored: {int(scored[-1]) if len(scored) else 0}")
    axes.set_xlabel("evaluation #")
    axes.set_ylabel("documents (all tasks together)")
    axes.legend(loc="upper left", fontsize="small")
    _save(figure, path)
    saved = f", {1 - scored[-1] / (full * len(ids)):.0%} fewer than scoring every candidate in full" if full else ""
    return Plot(path, f"Documents scored over the run, {len(raced)} of {len(evaluations)} candidates stopped early "
                      f"by racing{saved}.")


def best_so_far(evaluations: Sequence[Evaluation]) -> List[float]:
    """The running maximum of fitness in evaluation order; NaN until the first success."""
    best, curve = float("nan"), []
    for evaluation in evaluations:
        if evaluation.ok and not evaluation.fitness <= best:
            best = evaluation.fitness
        curve.append(best)
    return curve


def _shade_generations(axes, evaluations: Sequence[Evaluation]) -> None:
    spans: Dict[int, List[int]] = {}
    for evaluation in evaluations:
        spans.setdefault(evaluation.generation, []).append(evaluation.id)
    for index, ids in enumerate(spans.values()):
        if index % 2:
            axes.axvspan(min(ids) - 0.5, max(ids) + 0.5, color="0.92", zorder=0)


def _fitness_caption(evaluations: Sequence[Evaluation], best: List[float]) -> str:
    failed = sum(e.failed for e in evaluations)
    known = [(e, b) for e, b in zip(evaluations, best) if not np.isnan(b)]
    if not known:
        return f"No successful evaluation yet ({len(evaluations)} evaluated, {failed} failed, shown as red crosses)."
    (first, start), (_, end) = known[0], known[-1]
    reached = next(e.id for e, b in known if b == end)
    crosses = f"{failed} failed, shown as red crosses" if failed else "none failed"
    progress = (f"rising from {start:.3f} at #{first.id} to {end:.3f} at #{reached}" if reached != first.id
                else f"set at {end:.3f} by the first success #{first.id} and never beaten")
    return (f"Fitness of each of the {len(evaluations)} evaluations in the order they ran ({crosses}); "
            f"the line is the best so far, {progress}.")


def heatmap_panels(genes: Sequence[Gene], genotype: Sequence[float]) -> Dict[str, Dict[str, Any]]:
    """One grid per (parameter, filter): rows are models (or 'shared', 'noise'), columns layer groups."""
    panels: Dict[str, Dict[str, Any]] = {}
    for gene, value in zip(genes, genotype):
        panel = panels.setdefault(_panel_title(gene, genes), {"rows": [], "cells": {}, "groups": 1,
                                                             "low": gene.low, "high": gene.high,
                                                             "integer": gene.integer})
        row = _row_label(gene)
        if row not in panel["rows"]:
            panel["rows"].append(row)
        panel["cells"][(row, gene.group)] = float(value)
        panel["groups"] = max(panel["groups"], gene.groups)
        panel["low"], panel["high"] = min(panel["low"], gene.low), max(panel["high"], gene.high)
    return panels


def _panel_title(gene: Gene, genes: Sequence[Gene]) -> str:
    filtered = any(g.parameter == gene.parameter and g.filter is not None for g in genes)
    if not filtered:
        return gene.parameter
    return f"{gene.parameter}: {gene.filter}" if gene.filter else f"{gene.parameter}: other tensors"


def _row_label(gene: Gene) -> str:
    if gene.parameter == NOISE:
        label = "noise"
    else:
        label = (Path(gene.model).name or gene.model) if gene.model else "shared"
    return label if gene.slice_index is None else f"{label} / slice {gene.slice_index}"


def plot_parameters(winner: Evaluation, genes: Sequence[Gene], path: Path) -> Plot:
    """The winner's genotype laid out like the recipe, so per-model and per-depth choices are readable."""
    panels = heatmap_panels(genes, winner.genotype)
    columns = min(len(panels), 3)
    rows = -(-len(panels) // columns)
    widest = max(p["groups"] for p in panels.values())
    tallest = max(len(p["rows"]) for p in panels.values())
    figure = Figure(figsize=(columns * (2.6 + 0.9 * widest), 0.8 + rows * (1.0 + 0.45 * tallest)), layout="constrained")
    for index, (title, panel) in enumerate(panels.items()):
        _heatmap(figure, figure.add_subplot(rows, columns, index + 1), title, panel)
    figure.suptitle(f"Parameters of the winner #{winner.id} (fitness {winner.fitness:.4f})")
    _save(figure, path)
    return Plot(path, f"The winner's (#{winner.id}) value of every searched parameter, one row per model and one "
                      "column per layer-gradient point, coloured on that parameter's search range.")


def plot_route(winner: Evaluation, path: Path) -> Plot:
    """A routed winner's layer sequence, beside its recipe."""
    hops, ends = route_of(winner.recipe)
    save_route(hops, ends, f"Route of the winner #{winner.id}: {len(hops)} layers (fitness {winner.fitness:.4f})", path)
    return Plot(path, f"The winner's (#{winner.id}) layers in the order a token passes through them, each coloured by "
                      f"the model it comes from, labelled with its layer there and as tall as its scale: "
                      f"{describe_route(hops)}.", code=winner.recipe)


def _heatmap(figure: Figure, axes, title: str, panel: Dict[str, Any]) -> None:
    rows, groups = panel["rows"], panel["groups"]
    grid = np.full((len(rows), groups), np.nan)
    for (row, group), value in panel["cells"].items():
        grid[rows.index(row), group] = value
    image = axes.imshow(grid, cmap="viridis", vmin=panel["low"], vmax=panel["high"], aspect="auto")
    middle = (panel["low"] + panel["high"]) / 2
    for (r, g), value in np.ndenumerate(grid):
        if not np.isnan(value):
            text = f"{value:.0f}" if panel["integer"] else f"{value:.3g}"
            axes.text(g, r, text, ha="center", va="center", fontsize=9, color="white" if value < middle else "black")
    axes.set_xticks(range(groups), _depth_labels(groups))
    axes.set_yticks(range(len(rows)), rows)
    axes.set_xlabel("layer depth")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, shrink=0.9)


def _depth_labels(groups: int) -> List[str]:
    """Gradient points sit at evenly spaced relative depths (mergekit's N-point gradients)."""
    if groups == 1:
        return ["all layers"]
    return [f"{g / (groups - 1):.0%}" for g in range(groups)]


def plot_tasks(report: Dict[str, Any], path: Path) -> Plot:
    """Report-task scores side by side, to show whether the merge beats its parents and the starting point."""
    rows = report["rows"]
    tasks = list(rows[0]["scores"])
    labels = [f"{t}\n({rows[0]['scores'][t]['metric']})" for t in tasks] + ["mean"]
    figure = Figure(figsize=(max(7.0, 1.6 * len(labels) + 0.25 * len(rows)), 4.8), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(rows)
    colours = _role_colours(rows)
    for index, row in enumerate(rows):
        values = [row["scores"][t]["value"] for t in tasks] + [row["mean"]]
        errors = [row["scores"][t]["stderr"] or 0.0 for t in tasks] + [row["mean_stderr"] or 0.0]
        offsets = np.arange(len(labels)) - 0.4 + width * (index + 0.5)
        axes.bar(offsets, values, width, yerr=errors, capsize=2, color=colours[index], edgecolor="black",
                 linewidth=0.4, label=_bar_label(row))
    axes.set_xticks(range(len(labels)), labels, fontsize="small")
    axes.set_ylabel("score (error bars: stderr)")
    axes.set_title("Report tasks: parents, starting point and winner")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    _save(figure, path)
    return Plot(path, "Scores on the report tasks (never seen by the search) of each parent model, the starting "
                      "point and the winner, with lm-eval's standard errors as error bars.")


def _bar_label(row: Dict[str, Any]) -> str:
    return f"{row['name']} (parent)" if row["role"] == "parent" else row["name"]


def _role_colours(rows: Sequence[Dict[str, Any]]) -> List[Any]:
    """Parents in greys so the starting point and the winner stand out."""
    parents = sum(r["role"] == "parent" for r in rows)
    greys = iter(np.linspace(0.35, 0.85, parents) if parents else [])
    fixed = {"start": "tab:orange", "winner": "tab:green"}
    return [fixed.get(r["role"]) or str(round(float(next(greys)), 3)) for r in rows]


def plot_lineage(evaluations: Sequence[Evaluation], root: int, path: Path) -> Plot:
    """The winner's family tree: which operators and ancestors produced it."""
    figure, caption = draw_lineage(evaluations, root)
    _save(figure, path)
    return Plot(path, caption)


def plot_map(archive: Archive, evaluations: Sequence[Evaluation], parents: Dict[str, Sequence[float]],
             path: Path) -> Plot:
    """A `qd` run's map: each filled cell coloured by its elite's fitness, one measure per axis (the first two;
    one measure: the fitness up the side), with the start and the parents (scored on the measures) marked."""
    figure = Figure(figsize=(7.5, 6), layout="constrained")
    axes = figure.add_subplot()
    names = list(archive.measures)
    (x_low, x_high), *rest = archive.ranges
    y_low, y_high = rest[0] if rest else (0.0, 1.0)
    fitness = [e.objective for e in archive.elites]
    if archive.kind == "grid" and len(archive.shape) == 2:
        grid = np.full(archive.shape[::-1], np.nan)
        for elite in archive.elites:
            grid[elite.cell[1], elite.cell[0]] = elite.objective
        image = axes.imshow(grid, origin="lower", extent=(x_low, x_high, y_low, y_high), aspect="auto", cmap="viridis")
    else:
        image = axes.scatter([e.measures[0] for e in archive.elites],
                             [e.measures[1] if rest else e.objective for e in archive.elites],
                             c=fitness, cmap="viridis", s=80, marker="s", edgecolor="black", linewidth=0.3)
    figure.colorbar(image, ax=axes, label="fitness of the cell's elite")
    start = next((e for e in evaluations if e.operator == "start" and e.ok), None)
    if start is not None:
        at = [measure(start.flat_scores(), key) for key in archive.measures]
        axes.scatter([at[0]], [at[1] if rest else start.fitness], s=220, marker="*", color="tab:orange",
                     edgecolor="black", zorder=3, label=f"start #{start.id}")
    for index, (name, at) in enumerate(parents.items()):  # one measure: the parents along the bottom
        axes.scatter([at[0]], [at[1] if rest else min(fitness)], s=90, marker="D", edgecolor="white", zorder=3,
                     color=str(round(0.2 + 0.6 * index / len(parents), 3)), label=f"{name} (parent)")
    axes.set_xlim(x_low, x_high)
    if rest:
        axes.set_ylim(y_low, y_high)
    axes.set_xlabel(names[0])
    axes.set_ylabel(names[1] if rest else "fitness")
    total = int(np.prod(archive.shape))
    axes.set_title(f"The map: {len(archive.elites)} of {total} cells filled")
    axes.legend(loc="best", fontsize="small")
    _save(figure, path)
    best = max(archive.elites, key=lambda e: e.objective)
    return Plot(path, f"The search's map ({archive.kind}, {' x '.join(map(str, archive.shape))} cells over "
                      f"{', '.join(names)}): each filled cell is coloured by the fitness of the best merge that landed "
                      f"there; the star is the starting point" + (", the diamonds the parents" if parents else "")
                      + f". The fittest elite is #{best.evaluation} in cell {','.join(map(str, best.cell))}; "
                      f"`evomerge export RUN --cell I,J` exports any cell's elite.")
