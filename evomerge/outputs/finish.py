"""Finishing a run, after the loop: confirm the finalists (confirmation.py), score the report table
(scoreboard.py), store it and write the run's report files (text.py), and hand them with the plots
(report.py) to the recipe's experiment trackers. It is given what it uses, not the search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from evomerge.files import write_atomically
from evomerge.outputs.confirmation import (
    ConfirmationDocuments,
    confirm_finalists,
    confirmation_documents,
    rankings,
    start_evaluation,
)
from evomerge.outputs.qd_map import map_report
from evomerge.outputs.report import write_report
from evomerge.outputs.scoreboard import build_report
from evomerge.outputs.text import render_markdown
from evomerge.recipe.loading import Recipe
from evomerge.recipe.space import SearchSpace
from evomerge.run.store import BEST_RECIPE, EVALUATIONS, RunStore
from evomerge.run.worker import Worker
from evomerge.run_options import RunOptions
from evomerge.scoring.paired import resolution, spread
from evomerge.scoring.tasks import TaskSuite

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FRONT_JSON = "front.json"


def write_report_files(directory: Path, report: Dict[str, Any]) -> None:
    write_atomically(directory / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    write_atomically(directory / REPORT_MD, render_markdown(report))
    if "front" in report:
        write_atomically(directory / FRONT_JSON, json.dumps(report["front"], indent=2) + "\n")


def resolutions(store: RunStore, space: SearchSpace, worker: Worker,
                documents: Optional[ConfirmationDocuments]) -> Dict[str, Any]:
    """The smallest paired differences the search and the confirmation documents resolve at two standard
    errors: from the binomial bound, and from the start's own per-document scores once it is scored."""
    if worker.scorer is None:
        return {}
    terms = worker.objective.terms
    search = {task: len(worker.scorer.pool(task)) for task in worker.suite.names}
    found = {"search_documents": sum(search.values()), "search_bound": resolution(terms, search)}
    start = start_evaluation(store.evaluations.finished(), space)
    if start is not None and start.ok:
        found["search_start"] = resolution(terms, search, spread(terms, store.evaluations.document_scores(start.id),
                                                                 start.metrics))
    crown = store.confirmations.crown() or {}
    confirmed = store.confirmations.all().get(crown.get("start"))
    if documents is not None and confirmed is not None:
        counts = documents.count()
        found.update(confirm_documents=sum(counts.values()),
                     confirm_start=resolution(documents.terms, counts, spread(documents.terms, confirmed.documents)))
    return found


def finish_run(store: RunStore, recipe: Recipe, space: SearchSpace, worker: Worker, confirmation: Optional[TaskSuite],
               options: RunOptions) -> Dict[str, Any]:
    """Confirm the finalists (if the recipe asks) with `worker`, the one in this process; score the report
    tasks for the parents, the start and the winner; store the report and write the run's views and files."""
    documents = confirmation_documents(recipe, confirmation, worker.suite, worker.objective, worker.split)
    confirm_finalists(store, recipe, space, worker.materializer, documents, quiet=options.quiet)
    best = store.confirmations.standings()[0]
    report = build_report(
        recipe, worker.materializer, worker.objective, space.starting_point(), best, space.decode(best.genotype),
        store.evaluations.finished(), budget=recipe.spec.budget.evaluations,
        separate=recipe.spec.objectives == "separate", options=options)
    ranked = store.evaluations.ranked()
    report["search_best_id"], report["best_fitness"] = ranked[0].id, ranked[0].fitness
    report["confirmation"] = rankings(store)
    report["resolution"] = resolutions(store, space, worker, documents)
    report.update(map_report(store.archive.read(), recipe, worker))  # a qd run's Pareto front and parents on its map
    store.put_report("report", report)
    store.views.rewrite()
    write_report_files(store.directory, report)
    store.set_meta("status", "done")
    if recipe.spec.track.enabled:  # the trackers get the report, the winner's recipe and the plots
        files = [store.directory / name for name in (REPORT_JSON, REPORT_MD, FRONT_JSON, BEST_RECIPE, EVALUATIONS)]
        store.views.finished(report, [path for path in files if path.is_file()] + write_report(store.directory))
    return report
