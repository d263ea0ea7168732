"""The final table: report tasks (never searched on) for each parent, the starting point
and the winner, with lm-eval's standard errors, and the winner's gain over the start paired
on the same documents; plus the Pareto front of a multi-objective run, and, when the recipe confirms
its finalists (confirmation.py), the winner is the confirmed one and the finalists are listed by search
fitness and by confirmation. Scored here, stored by the search loop, rendered as JSON and Markdown
(and as HTML by report.py, from the same cells)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from evomerge.errors import SECTION
from evomerge.files import write_atomically
from evomerge.merge.materializer import Materializer
from evomerge.outputs.confirmation import confirm_finalists, rankings
from evomerge.recipe import layout
from evomerge.recipe.candidate import Candidate
from evomerge.recipe.device_defaults import scoring_dtype
from evomerge.recipe.loading import Recipe
from evomerge.recipe.space_factory import build_space
from evomerge.run.store import BEST_RECIPE, EVALUATIONS, Evaluation

if TYPE_CHECKING:
    from evomerge.run.loop import Search
from evomerge.scoring.fitness import Metrics, Objective
from evomerge.scoring.scorer import Documents, LMEvalScorer, load_from_disk
from evomerge.scoring.tasks import TaskSuite

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FRONT_JSON = "front.json"


Scores = Dict[str, Dict[str, Any]]  # column -> {"metric", "value", "stderr"}


def task_scores(metrics: Metrics, suite: TaskSuite) -> Scores:
    """Each task's main metric with lm-eval's standard error."""
    scores = {}
    for task in suite.names:
        metric = suite.main_metric(task)
        scores[task] = {"metric": metric, "value": metrics[task][suite.result_key(task, metric)],
                        "stderr": metrics[task].get(suite.result_key(task, f"{metric}_stderr"))}
    return scores


def custom_scores(custom: Dict[str, float]) -> Scores:
    """The recipe's own fitness function, one column per value it returns."""
    return {name: {"metric": "score", "value": value, "stderr": None} for name, value in custom.items()}


def row(name: str, role: str, scores: Scores) -> Dict[str, Any]:
    values = [s["value"] for s in scores.values()]
    errors = [s["stderr"] for s in scores.values()]
    return {
        "name": name,
        "role": role,
        "scores": scores,
        "mean": sum(values) / len(values),
        "mean_stderr": math.sqrt(sum(e * e for e in errors)) / len(errors) if None not in errors else None,
    }


def build_report(recipe: Recipe, materializer: Materializer, objective: Objective, start: Candidate,
                 best: Evaluation, winner: Candidate, evaluations: Sequence[Evaluation], *, budget: int,
                 separate: bool, trust_remote_code: bool = False, quiet: bool = False) -> Dict[str, Any]:
    """Parents, starting point and winner scored on the report tasks (or, without them, the
    search tasks) with lm-eval's standard errors, plus the recipe's custom fitness if any."""
    spec = recipe.spec
    held_out = bool(spec.report_tasks)
    names = spec.report_tasks or [t.name for t in spec.tasks]
    suite = TaskSuite(names, recipe.task_paths(), source=recipe.path, key=f"{SECTION}.report_tasks",
                      options=spec.eval, seed=spec.seed) if names else None

    def scorer(model, tokenizer) -> Optional[LMEvalScorer]:
        return LMEvalScorer(suite, model, tokenizer, options=spec.eval, bootstrap_iters=100) if suite else None

    def scores(model, tokenizer, lm: Optional[LMEvalScorer]) -> Tuple[Scores, Documents]:
        metrics, documents = lm.score_with_documents() if lm else ({}, {})
        found = task_scores(metrics, suite) if lm else {}
        return {**found, **custom_scores(objective.custom_scores(model, tokenizer))}, documents

    resident = scorer(materializer.model, materializer.tokenizer)
    rows = []
    parents = sorted((r for _, r in layout.parent_references(build_space(recipe).largest_stages())), key=str)
    for reference in tqdm(parents, desc="report: parents", disable=quiet):  # a route's: all it routes over
        try:
            materializer.load_parent(reference)
            row_scores, _ = scores(materializer.model, materializer.tokenizer, resident)
        except ValueError:  # a parent that does not supply the output model's tensors (slices recipes)
            model, tokenizer = load_from_disk(reference.model.path, trust_remote_code)
            row_scores, _ = scores(model, tokenizer, scorer(model, tokenizer))
        rows.append(row(Path(reference.model.path).name, "parent", row_scores))
    documents = {}
    for name, role, candidate in (("starting point", "start", start), (f"winner (#{best.id})", "winner", winner)):
        materializer.materialize(candidate)
        row_scores, documents[role] = scores(materializer.model, materializer.tokenizer, resident)
        rows.append(row(name, role, row_scores))
    report = {
        "title": "evomerge search report" + ("" if held_out else " (no report_tasks: scored on what was searched)"),
        "held_out": held_out,
        "recipe": str(recipe.path),
        "searcher": spec.searcher.name,
        "seed": spec.seed,
        "budget": budget,
        "evaluations": len(evaluations),
        "failed": sum(e.failed for e in evaluations),
        "raced": sum(e.raced for e in evaluations),
        "documents": sum(e.documents for e in evaluations),
        "restarts": max((e.info.get("restart", 0) for e in evaluations), default=0),
        "winner_id": best.id,
        "device": best.device,  # where the search scored its candidates, and in what
        "dtype": scoring_dtype(recipe.merge, spec.eval, torch.device(best.device or materializer.device).type)
        or dtype_name(materializer.model),
        "table_device": str(materializer.device),  # where this table was scored (the driver's), and in what
        "table_dtype": dtype_name(materializer.model),
        "best_fitness": best.fitness,
        "objectives": objective.names(list(best.metrics.get("custom", {}))),
        "rows": rows,
        "gain": paired_gain(suite, documents["start"], documents["winner"]) if suite else None,
    }
    if separate:
        report["front"] = [{"id": e.id, "objectives": e.objectives, "metrics": e.metrics, "recipe": e.recipe}
                           for e in pareto_front(evaluations)]
    return report


def dtype_name(model) -> str:
    """A model's dtype as recipes spell it ('bfloat16')."""
    return str(model.dtype).removeprefix("torch.")


def paired_gain(suite: TaskSuite, start: Documents, winner: Documents) -> Optional[Dict[str, Any]]:
    """The winner's mean over the tasks' main metrics minus the start's, as the table's mean column
    weighs them (each task alike), with its standard error from the per-document differences on the
    same documents: the two models succeed and fail on mostly the same documents, so the difference
    varies less than either score. None when a main metric is not a mean over documents."""
    differences = []
    for task in suite.names:
        metric = suite.main_metric(task)
        if not suite.averaged(task, metric):
            return None
        key = suite.result_key(task, metric)
        differences.append(np.asarray(winner[task][key], dtype=float) - np.asarray(start[task][key], dtype=float))
    variance = sum(d.var(ddof=1) / len(d) for d in differences) / len(differences) ** 2
    return {"value": float(sum(d.mean() for d in differences) / len(differences)),
            "stderr": float(math.sqrt(variance)), "tasks": list(suite.names)}


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


def pareto_front(evaluations: Sequence[Evaluation]) -> List[Evaluation]:
    """Successful evaluations that no other one dominates on every objective (all maximized)."""
    ok = [e for e in evaluations if e.ok]

    def dominates(a: Evaluation, b: Evaluation) -> bool:
        return all(x >= y for x, y in zip(a.objectives, b.objectives)) and a.objectives != b.objectives

    return [e for e in ok if not any(dominates(other, e) for other in ok)]


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


def confirmed(report: Dict[str, Any]) -> str:
    """The sentence above the two rankings of the finalists, or '' when nothing was confirmed."""
    found = report.get("confirmation")
    if not found:
        return ""
    return (f"Confirmed before crowning: the search's {len(found['search_order'])} best candidates were scored on "
            f"{', '.join(found['tasks'])} (never searched on, not in the table above); the winner #{report['winner_id']} "
            "is the best there.")


def rankings_table(report: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    """The finalists by search fitness and by confirmation, side by side, as text cells."""
    found = report.get("confirmation")
    if not found:
        return [], []

    def cell(entry: Dict[str, Any], first: str) -> str:
        values = {"search": entry["fitness"], "confirmation": entry["confirmation"]}
        other = "confirmation" if first == "search" else "search"
        return f"#{entry['id']} {values[first]:.4f} ({other} {values[other]:.4f})"

    header = ["rank", "search fitness order", "confirmation order"]
    body = [[str(rank), cell(by_search, "search"), cell(by_confirmation, "confirmation")]
            for rank, (by_search, by_confirmation)
            in enumerate(zip(found["search_order"], found["confirmation_order"]), start=1)]
    return header, body


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


def render_markdown(report: Dict[str, Any]) -> str:
    header, body = table(report)
    said = [line for line in (summary(report), scored_on(report), verdict(report)) if line]
    lines = [f"# {report['title']}", "", *said, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    header, body = rankings_table(report)
    if body:
        lines += ["", confirmed(report), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def scored_on(report: Dict[str, Any]) -> str:
    """What the table's scores are: held-out report tasks, or (without them) what the search optimized."""
    if report.get("held_out"):
        return "Scores are on the report tasks, which the search never saw (± is lm-eval's standard error)."
    return ("Scores are on what the search optimized (the recipe has no `report_tasks`), so they flatter the "
            "winner; ± is lm-eval's standard error.")


def write_report_files(directory: Path, report: Dict[str, Any]) -> None:
    write_atomically(directory / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    write_atomically(directory / REPORT_MD, render_markdown(report))
    if "front" in report:
        write_atomically(directory / FRONT_JSON, json.dumps(report["front"], indent=2) + "\n")


def finish_run(search: "Search") -> Dict[str, Any]:
    """After the loop: confirm the finalists (if the recipe asks), score the report tasks for the
    parents, the start and the winner, store the report and write the run's views and report files,
    and hand them (with the plots) to the recipe's experiment trackers."""
    confirm_finalists(search)
    best = search.store.confirmations.standings()[0]
    worker = search.worker
    report = build_report(
        search.recipe, worker.materializer, worker.objective, search.start, best, search.space.decode(best.genotype),
        search.store.evaluations.finished(), budget=search.budget, separate=search.separate,
        trust_remote_code=search.options.trust_remote_code, quiet=search.options.quiet)
    report["search_best_id"] = search.store.evaluations.ranked()[0].id
    report["best_fitness"] = search.store.evaluations.ranked()[0].fitness
    report["confirmation"] = rankings(search)
    search.store.put_report("report", report)
    search.store.views.rewrite()
    directory = search.store.directory
    write_report_files(directory, report)
    search.store.set_meta("status", "done")
    if search.recipe.spec.track.enabled:  # the trackers get the report, the winner's recipe and the plots
        from evomerge.outputs.report import write_report  # report.py draws on this module's text helpers

        files = [directory / name for name in (REPORT_JSON, REPORT_MD, FRONT_JSON, BEST_RECIPE, EVALUATIONS)]
        search.store.views.finished(report, [path for path in files if path.is_file()] + write_report(directory))
    return report
