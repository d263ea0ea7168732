"""`write_report`: plots and an HTML page for a run directory, from a real search or a stored lineage."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from evomerge.cli import main
from evomerge.outputs.finish import finish_run
from evomerge.outputs.lineage import ancestry, lineage_layout
from evomerge.outputs.report import heatmap_panels, write_report
from evomerge.outputs.scoreboard import paired_gain
from evomerge.outputs.text import verdict
from evomerge.paths import TASKS_DIR
from evomerge.recipe.candidate import Gene
from evomerge.run.start import SearchOptions, start_search
from evomerge.run.store import Evaluation, RunStore
from evomerge.scoring.tasks import TaskSuite

GENES = [Gene(f"weight[{m}].{f or '*'}@{g}", "weight", 0.0, 1.5, g, 2, f"/zoo/{m}", f)
         for m in ("pair", "rev") for f in ("self_attn", None) for g in range(2)]
GENES += [Gene("lambda", "lambda", 0.5, 1.5), Gene("noise", "noise", 0.0, 0.01)]

#  gen 0     gen 1               gen 2
#  0 ─┐
#  1 ─┴─ 4 (crossover) ─┐
#  2 ─┐                 ├─ 8 (crossover, the winner)
#  3 ─┴─ 5 (crossover) ─┘
#  3 ─── 6 (mutation, failed)
#        7 (init)          9 (mutation of 1)
FAMILY = {4: (0, 1), 5: (2, 3), 6: (3,), 8: (4, 5), 9: (1,)}


def _assert_png(path):
    image = imread(path)
    height, width = image.shape[:2]
    assert 250 <= height <= 3000 and 400 <= width <= 4000, (path.name, image.shape)
    assert np.std(image) > 0.05, f"{path.name} is blank"


def _lineage_store(run_dir, generations=(0, 0, 0, 0, 1, 1, 1, 1, 2, 2), family=FAMILY):
    store = RunStore.create(run_dir, {"recipe_text": "", "status": "searched"})
    store.set_meta("genes", [asdict(g) for g in GENES])
    for id_, generation in enumerate(generations):
        parents = list(family.get(id_, ()))
        operator = ("crossover:blx+mutation" if len(parents) == 2 else "mutation") if parents else "init"
        failed = id_ == 6
        genotype = [g.low + (g.high - g.low) * ((id_ + i) % 7) / 6 for i, g in enumerate(GENES)]
        proposal = Evaluation(id=id_, generation=generation, genotype=genotype, recipe="", status="pending",
                              parents=parents, operator=operator)
        store.add_proposals([proposal])
        store.add_result(replace(proposal, status="failed" if failed else "ok",
                                 fitness=None if failed else 0.5 + 0.04 * id_ - 0.3 * (id_ == 9)))
    return store


@pytest.mark.slow
def test_the_report_command_draws_every_plot_and_a_page_that_shows_them(demo_recipe, tmp_path):
    run_dir = tmp_path / "run"
    search = start_search(demo_recipe(eval={"limit": 20}, searcher={"name": "cma", "popsize": 4}), run_dir,
                          SearchOptions(evaluations=8, quiet=True))
    search.run()
    finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)

    result = CliRunner().invoke(main, ["report", str(run_dir)])

    assert result.exit_code == 0, result.output
    written = [Path(line) for line in result.output.split()]
    assert [p.name for p in written] == ["fitness.png", "parameters.png", "tasks.png", "documents.png", "report.html"]
    for image in written[:-1]:
        _assert_png(image)
    page = (run_dir / "report.html").read_text()
    assert all(f'<img src="{p.name}"' in page for p in written[:-1])
    assert "winner (#" in page and "zoo_pair_report (acc)" in page and page.count("<figcaption>") == 4
    assert "which the search never saw" in page
    assert not (run_dir / "lineage.png").exists(), "CMA-ES records no parents"


def test_a_recipe_scored_only_by_its_own_function_gets_a_report_of_that_function(demo_recipe, tmp_path):
    (tmp_path / "logit_fitness.py").write_text(textwrap.dedent('''
        def score(model, tokenizer):
            ids = tokenizer("r:abcde=edcba", return_tensors="pt")["input_ids"]
            return {"sharpness": float(model(input_ids=ids).logits.std())}
    '''))
    recipe = demo_recipe(tasks=[], report_tasks=[], fitness="logit_fitness:score", confirm=None,
                         searcher={"name": "ga", "population": 4})  # its first generation holds the start
    run_dir = tmp_path / "run"
    search = start_search(recipe, run_dir, SearchOptions(evaluations=4, quiet=True))
    search.run()

    report = finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)

    assert [r["role"] for r in report["rows"]] == ["parent"] * 5 + ["start", "winner"]
    assert all(list(r["scores"]) == ["custom.sharpness"] for r in report["rows"])
    winner = report["rows"][-1]["scores"]["custom.sharpness"]["value"]
    assert winner == pytest.approx(report["best_fitness"])
    assert report["rows"][-2]["scores"]["custom.sharpness"]["value"] <= winner
    markdown = (run_dir / "report.md").read_text()
    assert "custom.sharpness (score)" in markdown and "the recipe has no `report_tasks`" in markdown
    assert [p.name for p in write_report(run_dir)] == ["fitness.png", "parameters.png", "tasks.png", "report.html"]


def test_a_searcher_that_records_parents_gets_the_winners_family_tree(tmp_path):
    _lineage_store(tmp_path / "run").close()

    written = write_report(tmp_path / "run")

    assert [p.name for p in written] == ["fitness.png", "parameters.png", "lineage.png", "report.html"]
    for image in written[:-1]:
        _assert_png(image)
    page = written[-1].read_text()
    assert '<img src="lineage.png"' in page and "the winner #8 came from: 6 ancestors" in page
    assert "No report table yet" in page and "tasks.png" not in page


def test_the_ancestry_follows_recorded_parents_back_from_the_winner(tmp_path):
    evaluations = {e.id: e for e in _lineage_store(tmp_path / "run").evaluations.finished()}

    edges = ancestry(evaluations, root=8)

    assert edges == [(8, 4), (8, 5), (4, 0), (4, 1), (5, 2), (5, 3)]
    positions = lineage_layout(evaluations, 8, edges)
    assert set(positions) == {0, 1, 2, 3, 4, 5, 8}
    assert positions[8] == (2.0, 0.0) and positions[4][1] > positions[5][1]
    assert [positions[n][0] for n in (0, 1, 2, 3)] == [0.0] * 4
    assert ancestry(evaluations, root=8, depth=1) == [(8, 4), (8, 5)]


def test_a_long_line_of_descent_is_cut_to_the_recent_ancestors(tmp_path):
    chain = {i: (i - 1,) for i in range(1, 10)}
    store = _lineage_store(tmp_path / "run", generations=range(10), family=chain)
    evaluations = {e.id: e for e in store.evaluations.finished()}
    store.close()

    assert ancestry(evaluations, root=9, depth=3) == [(9, 8), (8, 7), (7, 6)]
    assert write_report(tmp_path / "run")[2].name == "lineage.png"


def test_the_winners_genes_are_laid_out_by_parameter_model_and_layer_group():
    panels = heatmap_panels(GENES, list(range(len(GENES))))

    assert list(panels) == ["weight: self_attn", "weight: other tensors", "lambda", "noise"]
    fallback = panels["weight: other tensors"]
    assert fallback["rows"] == ["pair", "rev"] and fallback["groups"] == 2
    assert fallback["cells"] == {("pair", 0): 2.0, ("pair", 1): 3.0, ("rev", 0): 6.0, ("rev", 1): 7.0}
    assert panels["lambda"]["rows"] == ["shared"] and panels["noise"]["rows"] == ["noise"]
    assert (panels["noise"]["low"], panels["noise"]["high"]) == (0.0, 0.01)


def test_the_same_run_gives_the_same_report(tmp_path):
    _lineage_store(tmp_path / "run").close()
    first = {p.name: p.read_bytes() for p in write_report(tmp_path / "run")}
    second = {p.name: p.read_bytes() for p in write_report(tmp_path / "run")}
    assert first == second


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    from evomerge.errors import EvomergeError

    with pytest.raises(EvomergeError, match="not a run directory"):
        write_report(tmp_path)


def test_the_winners_gain_over_the_start_is_paired_on_the_same_documents():
    suite = TaskSuite(["zoo_rev_report", "zoo_sort_report"], [TASKS_DIR])
    start = {"zoo_rev_report": {"acc": [1.0, 0.0, 1.0, 0.0]}, "zoo_sort_report": {"acc": [0.0, 0.0, 1.0, 1.0]}}
    winner = {"zoo_rev_report": {"acc": [1.0, 1.0, 1.0, 0.0]}, "zoo_sort_report": {"acc": [0.0, 0.0, 1.0, 1.0]}}
    gain = paired_gain(suite, start, winner)
    # rev gains one document in four, sort none; each task weighs half, as in the table's mean column
    assert gain["value"] == pytest.approx(0.5 * 0.25)
    assert gain["stderr"] == pytest.approx(0.5 * np.std([0, 1, 0, 0], ddof=1) / 2)
    assert paired_gain(suite, start, start) == {"value": 0.0, "stderr": 0.0, "tasks": suite.names}


NOTHING_BETTER = "; within two standard errors: the search found nothing better than the start on the {} tasks."


@pytest.mark.parametrize("held_out, value, stderr, ending", [
    (True, 0.01, 0.02, NOTHING_BETTER.format("report")),
    (True, -0.04, 0.02, NOTHING_BETTER.format("report")),
    (True, 0.1, 0.02, "(paired on the same documents)."),
    (True, -0.1, 0.02, "; the winner is worse than the start on the report tasks."),
    (False, 0.1, 0.0, "(paired on the same documents)."),
    (False, 0.0, 0.0, NOTHING_BETTER.format("search")),
])
def test_a_gain_within_two_standard_errors_is_said_plainly(held_out, value, stderr, ending):
    said = verdict({"held_out": held_out, "gain": {"value": value, "stderr": stderr, "tasks": ["t"]}})
    tasks = "report tasks" if held_out else "search tasks"
    assert said.startswith(f"The winner's gain over the starting point on the {tasks}: {value:+.4f} ± {stderr:.4f} ")
    assert said.endswith(ending)
    assert verdict({"held_out": True, "gain": None}) == ""  # a custom fitness alone: no report tasks


def test_the_report_states_the_winners_gain_and_whether_it_is_real(demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"limit": 30}, searcher={"name": "ga", "population": 4}, confirm=None)
    search = start_search(recipe, tmp_path / "run", SearchOptions(evaluations=8, quiet=True))
    search.run()

    report = finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)

    rows = {r["role"]: r for r in report["rows"] if r["role"] != "parent"}
    gain = report["gain"]
    assert gain["value"] == pytest.approx(rows["winner"]["mean"] - rows["start"]["mean"])
    assert gain["stderr"] > 0 or gain["value"] == 0
    assert json.loads((tmp_path / "run" / "report.json").read_text())["gain"] == gain
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert verdict(report) in markdown and "paired on the same documents" in markdown
    assert (report["dtype"], report["device"]) == ("float32", "cpu") == (report["table_dtype"], report["table_device"])
    assert "scored in float32 on cpu; best search fitness" in markdown
