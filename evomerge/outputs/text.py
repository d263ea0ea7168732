"""The report as text: its table, the sentences around it and the finalists' rankings, as cells, as
Markdown and as an HTML page around the plots report.py drew. Read from the report's dict alone, so the
page, the run's report.md and the exported model card (export.py) say the same without scoring anything."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Plot:
    """A written figure and the sentence that explains it on the page."""

    path: Path
    caption: str
    code: str = ""  # shown beside the figure (a routed winner's recipe)


def dtype_name(model) -> str:
    """A model's dtype as recipes spell it ('bfloat16')."""
    return str(model.dtype).removeprefix("torch.")


def verdict(report: Dict[str, Any]) -> str:
    """One sentence on the winner's gain over the start, plain when it is within two standard errors."""
    gain = report.get("gain")
    if not gain:
        return ""
    tasks = "report tasks" if report.get("held_out") else "search tasks"
    said = (f"The winner's gain over the starting point on the {tasks}: {gain['value']:+.4f} ± {gain['stderr']:.4f} "
            "(paired on the same documents)")
    if abs(gain["value"]) <= 2 * gain["stderr"]:
        return said + f"; within two standard errors: the search found nothing better than the start on the {tasks}."
    if gain["value"] < 0:
        return said + f"; the winner is worse than the start on the {tasks}."
    return said + "."


def summary(report: Dict[str, Any]) -> str:
    """The line above the table: searcher, budget and the best search fitness."""
    raced = f", {report['raced']} raced" if report.get("raced") else ""
    documents = f", {report['documents']} documents scored" if report.get("documents") else ""
    documents += f", {report['restarts']} restarts (IPOP)" if report.get("restarts") else ""
    scored = f"; scored in {report['dtype']} on {report['device']}" if report.get("dtype") else ""
    table = (report.get("table_dtype"), report.get("table_device"))
    if table[0] and table != (report.get("dtype"), report.get("device")):
        scored += f" (this table in {table[0]} on {table[1]})"
    return (f"Searcher `{report['searcher']}`, {report['evaluations']} evaluations ({report['failed']} failed"
            f"{raced}){documents}{scored}; best search fitness {report['best_fitness']:.4f} "
            f"(evaluation #{report.get('search_best_id', report['winner_id'])}).")


def scored_on(report: Dict[str, Any]) -> str:
    """What the table's scores are: held-out report tasks, or (without them) what the search optimized."""
    if report.get("held_out"):
        return "Scores are on the report tasks, which the search never saw (± is lm-eval's standard error)."
    return ("Scores are on what the search optimized (the recipe has no `report_tasks`), so they flatter the "
            "winner; ± is lm-eval's standard error.")


def resolved(report: Dict[str, Any]) -> str:
    """What the documents can tell apart: the smallest paired difference they resolve at two standard errors."""
    found = report.get("resolution")
    if not found:
        return ""
    start = f", {found['search_start']:.4f} by the start's own scores" if found.get("search_start") else ""
    said = (f"Resolution at two standard errors: the {found['search_documents']} search documents tell apart "
            f"differences of {found['search_bound']:.4f} by the binomial bound{start}")
    if found.get("confirm_start"):
        said += f"; the {found['confirm_documents']} confirmation documents, {found['confirm_start']:.4f} by the start's"
    return said + "."


def _difference(entry: Dict[str, Any]) -> str:
    found = entry.get("difference")
    return f"{found['value']:+.4f} ± {found['stderr']:.4f}" if found else "n/a"


def confirmed(report: Dict[str, Any]) -> str:
    """The crowning in words: who won, on which documents, by how much, and what would settle a near-tie."""
    found = report.get("confirmation")
    if not found:
        return ""
    if found.get("unconfirmed"):
        return ("Not confirmed: the fitness scores no lm-eval documents to hold back, so the search's best is the "
                "winner.")
    compared = (f"the {len(found['finalists'])} finalists (the best by the {found['rank']} estimate) and the start "
                f"were scored on {found['source']}, which chose none of them")
    if found["beat_start"] is None:
        return f"Confirmed before crowning: {compared}; the searcher never scored the start, so nothing checks " \
               f"that #{found['winner']} is better than it."
    if found["beat_start"]:
        entry = next(e for e in found["confirmation_order"] if e["id"] == found["winner"])
        return (f"Confirmed before crowning: {compared}; #{found['winner']} beat the start there by "
                f"{_difference(entry)}, paired, beyond {found['threshold']:.2f} standard errors "
                f"({found['z']:g} for one comparison, raised for {len(found['finalists'])}).")
    closest = sorted(found["confirmation_order"], key=lambda e: -e.get("difference", {}).get("value", 0.0))
    said = (f"No candidate beat the start by more than the noise: {compared}; none beat it by "
            f"{found['threshold']:.2f} standard errors, so the winner is the start (#{found['start']}). Closest: "
            + ", ".join(f"#{e['id']} {_difference(e)}" for e in closest[:3]))
    best = closest[0].get("difference") if closest else None
    if best and best["value"] > 0 and best["stderr"] > 0:
        documents = sum(found["documents"].values())
        needed = math.ceil(documents * (found["threshold"] * best["stderr"] / best["value"]) ** 2)
        said += (f"; about {needed} confirmation documents (now {documents}) would resolve #{closest[0]['id']}'s "
                 f"difference if it is real")
    return said + "."


def rankings_table(report: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    """The finalists by search fitness and by confirmation, side by side, as text cells."""
    found = report.get("confirmation")
    if not found or not found.get("finalists"):
        return [], []

    def cell(entry: Dict[str, Any], first: str) -> str:
        values = {"search": entry["fitness"], "confirmation": entry["confirmation"]}
        other = "confirmation" if first == "search" else "search"
        return f"#{entry['id']} {values[first]:.4f} ({other} {values[other]:.4f}; vs start {_difference(entry)})"

    header = ["rank", "search fitness order", "confirmation order"]
    body = [[str(rank), cell(by_search, "search"), cell(by_confirmation, "confirmation")]
            for rank, (by_search, by_confirmation)
            in enumerate(zip(found["search_order"], found["confirmation_order"]), start=1)]
    return header, body


def front_table(report: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    """A `qd` run's Pareto front over its map's measures (`map_front`), as text cells; none for other runs."""
    found = report.get("map_front")
    if not found:
        return [], []
    header = ["cell", "evaluation", "fitness"] + list(found["measures"])
    body = [[",".join(map(str, e["cell"])), f"#{e['id']}", f"{e['fitness']:.4f}"] + [f"{v:.4f}" for v in e["measures"]]
            for e in found["elites"]]
    return header, body


FRONT_SAID = ("The map's Pareto front: its elites that no other elite matches or beats on every measure, the "
              "trade-offs to choose from (`evomerge export RUN --cell I,J`).")


def table(report: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    """The report table as text cells, header and rows, for every format that shows it."""
    rows = report["rows"]
    columns = list(rows[0]["scores"]) if rows else []

    def cell(value: float, stderr: Optional[float]) -> str:
        return f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else "")

    header = ["model", "role"] + [f"{c} ({rows[0]['scores'][c]['metric']})" for c in columns] + ["mean"]
    body = [[r["name"], r["role"]] + [cell(r["scores"][c]["value"], r["scores"][c]["stderr"]) for c in columns]
            + [cell(r["mean"], r["mean_stderr"])] for r in rows]
    return header, body


def _sections(report: Dict[str, Any]) -> List[Tuple[str, Tuple[List[str], List[List[str]]]]]:
    """What follows the table: the crowning in words and its finalists; a `qd` run's front."""
    return [(confirmed(report), rankings_table(report)),
            (FRONT_SAID if report.get("map_front") else "", front_table(report))]


def render_markdown(report: Dict[str, Any]) -> str:
    header, body = table(report)
    said = [line for line in (summary(report), resolved(report), scored_on(report), verdict(report)) if line]
    lines = [f"# {report['title']}", "", *said, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    for said_above, (header, body) in _sections(report):
        if said_above:
            lines += ["", said_above]
        if body:
            lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def render_html(name: str, status: str, report: Optional[Dict[str, Any]], plots: Sequence[Plot]) -> str:
    """A self-contained page: the images sit beside it and are referenced by file name."""
    title = html.escape(report["title"] if report else f"evomerge run {name}")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.3em .6em;text-align:right}"
        "td:first-child,th:first-child,td:nth-child(2){text-align:left}tr.winner{font-weight:bold}"
        "img{max-width:100%;border:1px solid #ddd}</style>",
        "</head><body>",
        f"<h1>{title}</h1>",
        f"<p>Run <code>{html.escape(name)}</code>, status <em>{html.escape(status)}</em>.</p>",
    ]
    parts += _report_table(report) if report else ["<p>No report table yet: the search writes it when it finishes.</p>"]
    for plot in plots:
        parts += ["<figure>", f'<img src="{html.escape(plot.path.name)}" alt="{html.escape(plot.caption)}">',
                  f"<figcaption>{html.escape(plot.caption)}</figcaption>",
                  *([f"<pre>{html.escape(plot.code)}</pre>"] if plot.code else []), "</figure>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _report_table(report: Dict[str, Any]) -> List[str]:
    header, body = table(report)
    summary_line = html.escape(summary(report)).replace(f"`{report['searcher']}`",
                                                         f"<code>{html.escape(str(report['searcher']))}</code>")
    said = " ".join(html.escape(line) for line in (resolved(report), scored_on(report), verdict(report)) if line)
    lines = [f"<p>{summary_line} {said}</p>", "<table>",
             "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for row, cells in zip(report["rows"], body):
        lines.append(f'<tr class="{html.escape(row["role"])}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                     + "</tr>")
    lines.append("</table>")
    for said_above, (header, body) in _sections(report):
        if said_above:
            lines.append(f"<p>{html.escape(said_above)}</p>")
        if body:
            lines += ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
            lines += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body]
            lines.append("</table>")
    return lines
