"""Finishing a run, after the loop: confirm the finalists (confirmation.py), score the report table
(scoreboard.py), store it and write the run's report files (text.py), and hand them with the plots
(report.py) to the recipe's experiment trackers. It is given what it uses, not the search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from evomerge.files import write_atomically
from evomerge.outputs.confirmation import confirm_finalists, rankings
from evomerge.outputs.qd_map import map_report
from evomerge.outputs.report import write_report
from evomerge.outputs.scoreboard import build_report
from evomerge.outputs.text import render_markdown
from evomerge.recipe.loading import Recipe
from evomerge.recipe.space import SearchSpace
from evomerge.run.store import BEST_RECIPE, EVALUATIONS, RunStore
from evomerge.run.worker import Worker
from evomerge.run_options import RunOptions
from evomerge.scoring.tasks import TaskSuite

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FRONT_JSON = "front.json"


def write_report_files(directory: Path, report: Dict[str, Any]) -> None:
    write_atomically(directory / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    write_atomically(directory / REPORT_MD, render_markdown(report))
    if "front" in report:
        write_atomically(directory / FRONT_JSON, json.dumps(report["front"], indent=2) + "\n")


def finish_run(store: RunStore, recipe: Recipe, space: SearchSpace, worker: Worker, confirmation: Optional[TaskSuite],
               options: RunOptions) -> Dict[str, Any]:
    """Confirm the finalists (if the recipe asks) with `worker`, the one in this process; score the report
    tasks for the parents, the start and the winner; store the report and write the run's views and files."""
    if confirmation is not None:
        confirm_finalists(store, recipe, space, worker.materializer, confirmation, quiet=options.quiet)
    best = store.confirmations.standings()[0]
    report = build_report(
        recipe, worker.materializer, worker.objective, space.starting_point(), best, space.decode(best.genotype),
        store.evaluations.finished(), budget=recipe.spec.budget.evaluations,
        separate=recipe.spec.objectives == "separate", options=options)
    ranked = store.evaluations.ranked()
    report["search_best_id"], report["best_fitness"] = ranked[0].id, ranked[0].fitness
    report["confirmation"] = rankings(store, confirmation)
    report.update(map_report(store.archive.read(), recipe, worker))  # a qd run's Pareto front and parents on its map
    store.put_report("report", report)
    store.views.rewrite()
    write_report_files(store.directory, report)
    store.set_meta("status", "done")
    if recipe.spec.track.enabled:  # the trackers get the report, the winner's recipe and the plots
        files = [store.directory / name for name in (REPORT_JSON, REPORT_MD, FRONT_JSON, BEST_RECIPE, EVALUATIONS)]
        store.views.finished(report, [path for path in files if path.is_file()] + write_report(store.directory))
    return report
