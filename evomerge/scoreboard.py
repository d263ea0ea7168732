"""The final table: report tasks (never searched on) for each parent, the starting point
and the winner, with lm-eval's standard errors; plus the Pareto front of a
multi-objective run. Written to the store and rendered as JSON and Markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.evaluate import LMEvalScorer, Metrics, TaskSuite
from evomerge.store import Evaluation

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FRONT_JSON = "front.json"


def main_metric(suite: TaskSuite, task: str) -> str:
    produced = suite.higher_is_better(task)
    return "acc" if "acc" in produced else next(iter(produced))


def row(name: str, role: str, metrics: Metrics, suite: TaskSuite) -> Dict[str, Any]:
    scores = {}
    for task in suite.names:
        metric = main_metric(suite, task)
        scores[task] = {"metric": metric, "value": metrics[task][metric], "stderr": metrics[task].get(f"{metric}_stderr")}
    values = [s["value"] for s in scores.values()]
    errors = [s["stderr"] for s in scores.values()]
    return {
        "name": name,
        "role": role,
        "scores": scores,
        "mean": sum(values) / len(values),
        "mean_stderr": math.sqrt(sum(e * e for e in errors)) / len(errors) if None not in errors else None,
    }


def score_from_disk(path: str, suite: TaskSuite, batch_size: int, trust_remote_code: bool) -> Metrics:
    """For a parent that does not supply the output model's tensors as they are (slices recipes)."""
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return LMEvalScorer(suite, model, tokenizer, batch_size=batch_size, bootstrap_iters=100).score()


def pareto_front(evaluations: Sequence[Evaluation]) -> List[Evaluation]:
    """Successful evaluations that no other one dominates on every objective (all maximized)."""
    ok = [e for e in evaluations if e.ok]

    def dominates(a: Evaluation, b: Evaluation) -> bool:
        return all(x >= y for x, y in zip(a.objectives, b.objectives)) and a.objectives != b.objectives

    return [e for e in ok if not any(dominates(other, e) for other in ok)]


def render_markdown(report: Dict[str, Any]) -> str:
    rows = report["rows"]
    tasks = list(rows[0]["scores"]) if rows else []

    def cell(value, stderr) -> str:
        return f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else "")

    lines = [
        f"# {report['title']}",
        "",
        f"Searcher `{report['searcher']}`, {report['evaluations']} evaluations "
        f"({report['failed']} failed); best search fitness {report['best_fitness']:.4f} (evaluation #{report['winner_id']}).",
        "Scores are on the report tasks, which the search never saw (± is lm-eval's standard error).",
        "",
        "| model | role | " + " | ".join(f"{t} ({rows[0]['scores'][t]['metric']})" for t in tasks) + " | mean |",
        "|---|---|" + "---|" * (len(tasks) + 1),
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['role']} | "
                     + " | ".join(cell(r["scores"][t]["value"], r["scores"][t]["stderr"]) for t in tasks)
                     + f" | {cell(r['mean'], r['mean_stderr'])} |")
    return "\n".join(lines) + "\n"


def write_report_files(directory: Path, report: Dict[str, Any]) -> None:
    (directory / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (directory / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")
    if "front" in report:
        (directory / FRONT_JSON).write_text(json.dumps(report["front"], indent=2) + "\n", encoding="utf-8")
