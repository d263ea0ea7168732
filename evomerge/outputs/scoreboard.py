"""The final table, scored: report tasks (never searched on) for each parent, the starting point and
the winner, with lm-eval's standard errors, and the winner's gain over the start paired on the same
documents; plus the Pareto front of a multi-objective run. When the recipe confirms its finalists
(confirmation.py), the winner is the confirmed one. Stored by finish.py, rendered by text.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from evomerge.errors import SECTION
from evomerge.merge.materializer import Materializer
from evomerge.outputs.text import dtype_name
from evomerge.recipe import layout
from evomerge.recipe.candidate import Candidate
from evomerge.recipe.device_defaults import scoring_dtype
from evomerge.recipe.loading import Recipe
from evomerge.recipe.space_factory import build_space
from evomerge.run.store import Evaluation
from evomerge.run_options import RunOptions
from evomerge.scoring.fitness import Metrics, Objective
from evomerge.scoring.paired import paired_difference
from evomerge.scoring.scorer import Documents, LMEvalScorer, load_from_disk
from evomerge.scoring.tasks import TaskSuite

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
                 separate: bool, options: RunOptions = RunOptions()) -> Dict[str, Any]:
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
    for reference in tqdm(parents, desc="report: parents", disable=options.quiet):  # a route's: all it routes over
        try:
            materializer.load_parent(reference)
            row_scores, _ = scores(materializer.model, materializer.tokenizer, resident)
        except ValueError:  # a parent that does not supply the output model's tensors (slices recipes)
            model, tokenizer = load_from_disk(reference.model.path, options.trust_remote_code)
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


def paired_gain(suite: TaskSuite, start: Documents, winner: Documents) -> Optional[Dict[str, Any]]:
    """The winner's mean over the tasks' main metrics minus the start's, as the table's mean column
    weighs them (each task alike), with its standard error from the per-document differences on the
    same documents: the two models succeed and fail on mostly the same documents, so the difference
    varies less than either score. None when a main metric is not a mean over documents."""
    if not all(suite.averaged(task, suite.main_metric(task)) for task in suite.names):
        return None
    share = 1.0 / len(suite.names)
    found = paired_difference([(task, suite.result_key(task, suite.main_metric(task)), share, 1.0)
                               for task in suite.names], start, winner)
    return {"value": found.value, "stderr": found.stderr, "tasks": list(suite.names)}


def pareto_front(evaluations: Sequence[Evaluation]) -> List[Evaluation]:
    """Successful evaluations that no other one dominates on every objective (all maximized)."""
    ok = [e for e in evaluations if e.ok]

    def dominates(a: Evaluation, b: Evaluation) -> bool:
        return all(x >= y for x, y in zip(a.objectives, b.objectives)) and a.objectives != b.objectives

    return [e for e in ok if not any(dominates(other, e) for other in ok)]
