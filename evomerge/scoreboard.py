"""The final table: report tasks (never searched on) for each parent, the starting point
and the winner, with lm-eval's standard errors; plus the Pareto front of a
multi-objective run. Written to the store and rendered as JSON and Markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.evaluate import Metrics, TaskSuite
from evomerge.store import Evaluation

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FRONT_JSON = "front.json"


def main_metric(suite: TaskSuite, task: str) -> str:
    produced = suite.higher_is_better(task)
    return "acc" if "acc" in produced else next(iter(produced))


Scores = Dict[str, Dict[str, Any]]  # column -> {"metric", "value", "stderr"}


def task_scores(metrics: Metrics, suite: TaskSuite) -> Scores:
    """Each task's main metric with lm-eval's standard error."""
    scores = {}
    for task in suite.names:
        metric = main_metric(suite, task)
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


def load_from_disk(path: str, trust_remote_code: bool):
    """A parent that does not supply the output model's tensors as they are (slices recipes)."""
    return (AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code),
            AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))


def pareto_front(evaluations: Sequence[Evaluation]) -> List[Evaluation]:
    """Successful evaluations that no other one dominates on every objective (all maximized)."""
    ok = [e for e in evaluations if e.ok]

    def dominates(a: Evaluation, b: Evaluation) -> bool:
        return all(x >= y for x, y in zip(a.objectives, b.objectives)) and a.objectives != b.objectives

    return [e for e in ok if not any(dominates(other, e) for other in ok)]


def summary(report: Dict[str, Any]) -> str:
    """The line above the table: searcher, budget and the best search fitness."""
    return (f"Searcher `{report['searcher']}`, {report['evaluations']} evaluations ({report['failed']} failed); "
            f"best search fitness {report['best_fitness']:.4f} (evaluation #{report['winner_id']}).")


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
    lines = [f"# {report['title']}", "", summary(report), scored_on(report), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def scored_on(report: Dict[str, Any]) -> str:
    """What the table's scores are: held-out report tasks, or (without them) what the search optimized."""
    if report.get("held_out"):
        return "Scores are on the report tasks, which the search never saw (± is lm-eval's standard error)."
    return ("Scores are on what the search optimized (the recipe has no `report_tasks`), so they flatter the "
            "winner; ± is lm-eval's standard error.")


def write_report_files(directory: Path, report: Dict[str, Any]) -> None:
    (directory / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (directory / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")
    if "front" in report:
        (directory / FRONT_JSON).write_text(json.dumps(report["front"], indent=2) + "\n", encoding="utf-8")
