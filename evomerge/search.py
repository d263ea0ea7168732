"""The search loop: the only place that knows the recipe, space, materializer, scorer,
searcher and store together.

ask → decode → materialize in place → score with lm-eval → store → tell → checkpoint.
Every evaluation is in the store before the searcher is told about it, so a run killed
at any moment resumes from its last checkpoint without re-evaluating anything stored.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from evomerge import scoreboard
from evomerge.errors import EvomergeError, mergekit_refusals
from evomerge.evaluate import LMEvalScorer, Objective, TaskSuite
from evomerge.materialize import Materializer
from evomerge.racing import Race, check_averaged
from evomerge.recipe import SECTION, Recipe, load_recipe
from evomerge.searchers import Proposal, Searcher, make_searcher
from evomerge.validate import check_search
from evomerge.store import Evaluation, RunStore

RECIPE_COPY = "recipe.yaml"


@dataclass(frozen=True)
class SearchOptions:
    device: Optional[str] = None
    seed: Optional[int] = None
    evaluations: Optional[int] = None
    searcher: Optional[str] = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    quiet: bool = False


class SearchInterrupted(Exception):
    """Ctrl-C or SIGTERM: everything evaluated so far is stored."""


def start_search(recipe_path: Path, run_dir: Path, options: SearchOptions = SearchOptions()) -> "Search":
    """Validate and load everything first; the run directory is created only for a search that can start."""
    recipe = load_recipe(recipe_path).with_overrides(
        seed=options.seed, evaluations=options.evaluations, searcher=options.searcher)
    RunStore.check_new(run_dir)
    search = Search(recipe, options)
    store = RunStore.create(run_dir, {
        "recipe_path": str(recipe.path), "recipe_text": recipe.text, "options": asdict(options), "status": "new",
    })
    (Path(run_dir) / RECIPE_COPY).write_text(recipe.text, encoding="utf-8")
    return search.bind(store)


def resume_search(run_dir: Path, device: Optional[str] = None, evaluations: Optional[int] = None,
                  quiet: bool = False) -> "Search":
    """Continue a stopped run with the options it was started with (the budget may grow)."""
    store = RunStore.open(run_dir)
    stored = SearchOptions(**store.meta("options"))
    options = SearchOptions(**{**asdict(stored), "device": device or stored.device, "quiet": quiet,
                               "evaluations": evaluations or stored.evaluations})
    recipe = load_recipe(store.meta("recipe_path"), text=store.meta("recipe_text")).with_overrides(
        seed=options.seed, evaluations=options.evaluations, searcher=options.searcher)
    search = Search(recipe, options)
    if evaluations:
        store.set_meta("options", asdict(options))
    return search.bind(store)


def _flat_scores(evaluation: Evaluation) -> Dict[str, float]:
    """'task.metric' -> value (and 'custom.x'), standard errors left out."""
    return {f"{task}.{metric}": value for task, metrics in evaluation.metrics.items()
            for metric, value in metrics.items() if "_stderr" not in metric}


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Search:
    store: RunStore

    def __init__(self, recipe: Recipe, options: SearchOptions):
        self.recipe = recipe
        self.options = options
        spec = recipe.spec
        checked = check_search(recipe, allow_pickle=options.allow_pickle)
        self.space = checked.space
        self.start = self.space.starting_point()
        self.suite = TaskSuite([t.name for t in spec.tasks], recipe.task_paths(), source=recipe.path,
                               options=spec.eval, seed=spec.seed) if spec.tasks else None
        self.objective = Objective(spec.tasks, self.suite, checked.custom_fitness, source=recipe.path)
        with mergekit_refusals(recipe.path):
            self.materializer = Materializer(self.start.merge, device=options.device, parents=spec.parents,
                                             dtype=spec.eval.dtype,
                                             trust_remote_code=options.trust_remote_code, quiet=options.quiet)
        self.scorer = LMEvalScorer(self.suite, self.materializer.model, self.materializer.tokenizer,
                                   options=spec.eval, limit=spec.eval.limit) if self.suite else None
        self.race = Race(spec.eval.racing, self.scorer, self.objective, spec.seed) if spec.eval.racing else None
        if self.race and (problem := check_averaged(self.objective, self.scorer)):
            raise EvomergeError(problem, path=recipe.path, key=f"{SECTION}.eval.racing")
        self.separate = spec.objectives == "separate"
        objectives = len(self.objective.names()) if self.separate else 1
        self.fresh_searcher = make_searcher(spec.searcher, self.space.dimension, self.space.to_unit(self.space.x0),
                                            spec.seed, objectives, source=recipe.path, options=checked.searcher,
                                            genes=self.space.describe())

    def bind(self, store: RunStore) -> "Search":
        self.store = store
        store.set_meta("genes", [asdict(g) for g in self.space.genes])
        return self

    @property
    def budget(self) -> int:
        return self.recipe.spec.budget.evaluations

    def _searcher(self) -> tuple[Searcher, int]:
        checkpoint = self.store.latest_checkpoint()
        if checkpoint is not None:
            generation, state = checkpoint
            return Searcher.from_state(state), generation
        self.store.save_checkpoint(0, self.fresh_searcher.state())
        return self.fresh_searcher, 0

    def run(self) -> Evaluation:
        """Search until the budget is spent; returns the best evaluation."""
        searcher, generation = self._searcher()
        self.searcher = searcher  # racing asks it whether to prune (Optuna's pruners)
        self.store.set_meta("status", "running")
        progress = tqdm(total=self.budget, initial=min(self.store.count(), self.budget), desc="search",
                        disable=self.options.quiet, unit="cand")
        try:
            with _sigterm_as_interrupt():
                while self.store.count() < self.budget:
                    if not searcher.asked:  # a resumed run evaluates what its searcher had asked
                        searcher.asked = searcher.ask()
                        if not searcher.replayable:
                            self.store.save_checkpoint(generation, searcher.state())
                    proposals = searcher.asked
                    results = self._generation(proposals, generation, progress)
                    if len(results) < len(proposals):
                        break  # the budget ends inside this generation
                    if all(r.failed for r in results):
                        self.store.set_meta("status", "failed")
                        raise EvomergeError(f"every candidate of generation {generation} failed; the first: "
                                            f"{results[0].error}", path=self.store.directory)
                    for result in results:
                        searcher.note(result.id, _flat_scores(result))
                    searcher.tell(proposals, [self._fitness(r) for r in results])
                    searcher.asked = []
                    generation += 1
                    self.store.save_checkpoint(generation, searcher.state())
                    self.store.write_views()
        except KeyboardInterrupt:
            self.store.set_meta("status", "interrupted")
            raise SearchInterrupted(str(self.store.directory)) from None
        finally:
            progress.close()
        self.store.set_meta("status", "searched")
        ranked = self.store.ranked()
        if not ranked:
            raise EvomergeError("no candidate succeeded", path=self.store.directory)
        return ranked[0]

    def _fitness(self, evaluation: Evaluation):
        if evaluation.failed:
            return None
        return tuple(evaluation.objectives) if self.separate else (evaluation.fitness,)

    def _generation(self, proposals: List[Proposal], generation: int, progress: tqdm) -> List[Evaluation]:
        results = []
        for proposal in proposals:
            genotype = self.space.from_unit(proposal.genotype)
            stored = self.store.evaluation(proposal.id)
            if stored is not None:
                if not np.array_equal(np.asarray(stored.genotype), genotype):
                    raise EvomergeError(f"evaluation {proposal.id} does not match the searcher's checkpoint",
                                        path=self.store.directory)
                results.append(stored)
                continue
            if self.store.count() >= self.budget:
                break
            evaluation = self._evaluate(proposal, genotype, generation)
            self.store.add_evaluation(evaluation)
            results.append(evaluation)
            best = self.store.best_fitness()
            progress.set_postfix(best=f"{best:.4f}" if best is not None else "-",
                                 s_per_cand=f"{(evaluation.materialize_seconds or 0) + (evaluation.evaluate_seconds or 0):.2f}")
            progress.update(1)
        return results

    def _evaluate(self, proposal: Proposal, genotype: np.ndarray, generation: int) -> Evaluation:
        candidate = self.space.decode(genotype)
        evaluation = Evaluation(id=proposal.id, generation=generation, genotype=genotype.tolist(),
                                recipe=candidate.to_yaml(), status="ok", parents=list(proposal.parents),
                                operator=proposal.operator, info=dict(proposal.info))
        started = time.perf_counter()
        try:
            evaluation.materialize_seconds = self.materializer.materialize(candidate).seconds
            scored = time.perf_counter()
            custom = self.objective.custom_scores(self.materializer.model, self.materializer.tokenizer)
            metrics = self._score(evaluation, sum(custom.values()))
            evaluation.metrics = {**metrics, **({"custom": custom} if custom else {})}
            evaluation.objectives = self.objective.objectives(metrics, custom)
            evaluation.fitness = float(sum(evaluation.objectives))
            evaluation.evaluate_seconds = time.perf_counter() - scored
        except Exception as error:  # a failed candidate is data, not the end of the run
            if isinstance(error, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            evaluation.status, evaluation.error = "failed", f"{type(error).__name__}: {error}"
            evaluation.fitness = evaluation.objectives = None
            if evaluation.materialize_seconds is None:
                evaluation.materialize_seconds = time.perf_counter() - started
        return evaluation

    def _score(self, evaluation: Evaluation, custom: float) -> dict:
        """The lm-eval metrics, whole or raced in stages against the bar; counts the documents."""
        if self.scorer is None:
            return {}
        if self.race is None:
            evaluation.documents = self.scorer.documents
            return self.scorer.score()
        ranked = self.store.ranked()
        rank = self.recipe.spec.eval.racing.rank
        bar = ranked[rank - 1].fitness - custom if len(ranked) >= rank else None
        result = self.race.run(bar, prune=lambda stage, estimate: self.searcher.prune(evaluation.id, stage,
                                                                                       estimate + custom))
        evaluation.documents = result.documents
        if not result.complete:
            evaluation.status = "raced"
        return result.metrics

    def finish(self) -> dict:
        """Score the report (scoreboard.py) and store it; write the run's views."""
        best = self.store.ranked()[0]
        report = scoreboard.build_report(
            self.recipe, self.materializer, self.objective, self.start, best, self.space.decode(best.genotype),
            self.store.evaluations(), budget=self.budget, separate=self.separate,
            trust_remote_code=self.options.trust_remote_code, quiet=self.options.quiet)
        self.store.put_report("report", report)
        self.store.write_views()
        scoreboard.write_report_files(self.store.directory, report)
        self.store.set_meta("status", "done")
        return report
