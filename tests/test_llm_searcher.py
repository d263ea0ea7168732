"""The LLM-guided searcher against a fake OpenAI-compatible endpoint on 127.0.0.1: what it sends,
how it treats what comes back (never trusted), and a real search that spends its budget."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from click.testing import CliRunner
from fake_llm import FakeLLM, Stall, Status, serve

from evomerge.cli import main
from evomerge.errors import EvomergeError
from evomerge.run.start import SearchOptions, resume_search, start_search
from evomerge.run.store import RunStore
from evomerge.run_options import RunOptions
from evomerge.searchers import make_searcher
from evomerge.searchers.spec import SearcherSpec

GENES = [{"name": "weight[rev]", "low": 0.0, "high": 1.5, "controls": "mergekit parameter `weight` of model rev"},
         {"name": "lambda", "low": 0.5, "high": 1.5, "controls": "mergekit parameter `lambda` (shared)"}]


def _answer(*proposals, reflection="weight[rev] matters most"):
    return json.dumps({"reflection": reflection,
                       "proposals": [{"genes": genes, "rationale": f"try {i}"} for i, genes in enumerate(proposals)]})


def _any_valid_answer(body: dict) -> str:
    """Proposals for whatever genes the prompt lists, inside their ranges."""
    prompt = next(m["content"] for m in body["messages"] if m["role"] == "user")
    genes = re.findall(r"^- (\S+): \[([-\d.e]+), ([-\d.e]+)\]", prompt, flags=re.M)
    wanted = int(re.search(r"Propose (\d+) new candidates", prompt).group(1))
    rng = random.Random(len(prompt))
    return _answer(*[{name: rng.uniform(float(low), float(high)) for name, low, high in genes} for _ in range(wanted)])


@pytest.fixture
def llm():
    fake = FakeLLM()
    with serve(fake) as url:
        yield fake, url


def _searcher(url, **options):
    spec = SearcherSpec(name="llm", endpoint=url, model="fake-model", batch=3, timeout=0.3, retries=1, backoff=0.01,
                        **options)
    return make_searcher(spec, dimension=2, x0=np.array([0.5, 0.5]), seed=0, genes=GENES)


def _tell(searcher, proposals, fitness=0.5):
    for p in proposals:
        searcher.tell(p.id, (fitness + 0.01 * p.id,), {"zoo_rev_search.acc": fitness})


def test_the_model_is_shown_the_genes_then_the_history_its_proposals_and_its_reflections(llm):
    fake, url = llm
    fake.script = [_answer({"weight[rev]": 1.2, "lambda": 1.0}, {"weight[rev]": 0.3, "lambda": 0.7}),
                   _answer({"weight[rev]": 1.4, "lambda": 1.1}, {"weight[rev]": 0.9, "lambda": 0.6})]
    searcher = _searcher(url)
    first = searcher.ask()
    assert [p.operator for p in first] == ["start", "llm", "llm"]
    assert first[1].genotype == pytest.approx([1.2 / 1.5, 0.5]) and first[1].info["rationale"] == "try 0"
    prompt = fake.prompt(0)
    assert "- weight[rev]: [0, 1.5]; mergekit parameter `weight` of model rev" in prompt
    assert "Propose 2 new candidates" in prompt and "within about 3000 tokens" in prompt
    _tell(searcher, first, fitness=0.9)
    searcher.ask()
    prompt = fake.prompt(1)
    assert "Best candidates so far:" in prompt and "fitness 0.9200 (zoo_rev_search.acc 0.900)" in prompt
    assert "your rationale: try 0" in prompt and "Your earlier reflections: weight[rev] matters most" in prompt
    assert "weight[rev]=1.2" in prompt and "Propose 3 new candidates" in prompt
    assert fake.requests[1]["model"] == "fake-model"


def test_answers_are_never_trusted_but_repaired_or_replaced(llm):
    fake, url = llm
    searcher = _searcher(url)
    fake.script = ["Sure! Here you go:\n```json\n" + _answer({"weight[rev]": 1.0, "lambda": 1.0},
                                                          {"weight[rev]": 0.2, "lambda": 0.9}) + "\n```"]
    first = searcher.ask()
    assert [p.operator for p in first] == ["start", "llm", "llm"]  # prose and a code fence around the JSON
    _tell(searcher, first)
    best = first[-1].id
    fake.script = [_answer({"weight[rev]": 3.0, "lambda": 1.0},  # out of range: clipped
                           {"weight[rev]": 0.7, "bogus": 5},  # unknown gene left out, lambda from the best
                           {"weight[rev]": 1.0, "lambda": 1.0})]  # a repeat of #1: replaced
    second = searcher.ask()
    assert [p.operator for p in second] == ["llm-repaired", "llm-repaired", "fallback"]
    assert second[0].genotype == pytest.approx([1.0, 0.5])
    assert second[1].parents == (best,) and second[1].genotype[1] == pytest.approx(first[-1].genotype[1])
    assert second[2].parents and not np.allclose(second[2].genotype, first[1].genotype)
    _tell(searcher, second)
    fake.script = ['{"proposals": [{"genes": {"weight[rev]": 0.5,']  # broken JSON
    assert [p.operator for p in searcher.ask()] == ["fallback"] * 3


@pytest.mark.parametrize("trouble, requests", [([Status(500), Status(500)], 2), ([Stall(1.0), Stall(1.0)], 2)])
def test_an_endpoint_that_fails_is_retried_then_the_batch_falls_back(trouble, requests, llm):
    fake, url = llm
    fake.script = list(trouble)
    searcher = _searcher(url)
    proposals = searcher.ask()
    assert [p.operator for p in proposals] == ["start", "fallback", "fallback"]
    assert len(fake.requests) == requests and searcher.answers["unreachable"] == requests


def test_a_stall_then_an_answer_is_used(llm):
    fake, url = llm
    fake.script = [Stall(1.0), _answer({"weight[rev]": 0.4, "lambda": 0.8}, {"weight[rev]": 0.8, "lambda": 1.2})]
    assert [p.operator for p in _searcher(url).ask()] == ["start", "llm", "llm"]


def test_a_search_against_the_endpoint_spends_its_budget_and_resumes(llm, demo_recipe, tmp_path):
    fake, url = llm
    fake.default = _any_valid_answer
    searcher = {"name": "llm", "endpoint": url, "model": "fake-model", "batch": 4, "timeout": 5, "retries": 0}
    recipe = demo_recipe(eval={"limit": 20}, searcher=searcher)
    start_search(recipe, tmp_path / "run", SearchOptions(evaluations=6, quiet=True)).run()
    asked = len(fake.requests)
    resume_search(tmp_path / "run", RunOptions(quiet=True), evaluations=10).run()
    evaluations = RunStore.open(tmp_path / "run").evaluations.finished()
    assert [e.id for e in evaluations] == list(range(10)) and all(e.ok for e in evaluations)
    assert len(fake.requests) == asked + 1  # the interrupted generation was not asked again
    assert evaluations[0].operator == "start" and {e.operator for e in evaluations[1:]} == {"llm"}
    assert all(e.info["rationale"].startswith("try ") for e in evaluations[1:])
    assert evaluations[1].info["reflection"] == "weight[rev] matters most"
    assert "weight[pair]" in fake.prompt(0) and "zoo_pair_search.acc" in fake.prompt(-1)
    assert len({tuple(e.genotype) for e in evaluations}) == 10


def test_a_replay_of_the_recorded_answers_asks_and_repairs_exactly_as_the_original(llm):
    fake, url = llm
    fake.default = _any_valid_answer
    searcher = _searcher(url)
    first = searcher.ask()
    recorded = list(searcher.recorded)
    _tell(searcher, first)
    replayed = _searcher(url)
    replayed.replay_inputs(recorded)
    requests = len(fake.requests)
    assert [p.genotype.tolist() for p in replayed.ask()] == [p.genotype.tolist() for p in first]
    assert len(fake.requests) == requests  # the recorded answer, not a new request
    _tell(replayed, first)
    fake.script = ["no JSON here", "no JSON here"]
    original, again = searcher.ask(), replayed.ask()
    assert [p.operator for p in original] == [p.operator for p in again] == ["fallback"] * 3
    assert all(np.array_equal(a.genotype, b.genotype) for a, b in zip(original, again))


def test_the_prompt_keeps_within_its_token_budget_and_the_key_stays_out_of_the_run(llm, monkeypatch, demo_recipe,
                                                                                    tmp_path):
    fake, url = llm
    monkeypatch.setenv("MERGE_LLM_KEY", "sk-secret-value")
    fake.default = _any_valid_answer
    searcher = _searcher(url, token_budget=500, api_key_env="MERGE_LLM_KEY")
    for _ in range(30):
        _tell(searcher, searcher.ask())
    [system, user] = searcher.messages(3)
    assert len(system["content"]) + len(user["content"]) <= 500 * 4
    assert "Best candidates so far:" in user["content"] and "Propose 3 new candidates" in user["content"]
    assert user["content"].count("\n- #") < len(searcher.history)  # older history left out
    spec = {"name": "llm", "endpoint": url, "model": "fake-model", "batch": 2, "api_key_env": "MERGE_LLM_KEY"}
    start_search(demo_recipe(eval={"limit": 5}, searcher=spec), tmp_path / "run",
                 SearchOptions(evaluations=3, quiet=True)).run()
    assert all(b"sk-secret-value" not in path.read_bytes() for path in (tmp_path / "run").iterdir() if path.is_file())


@pytest.mark.parametrize("status, expected", [(401, "evomerge.searcher.api_key_env: "), (403, "evomerge.searcher.api_key_env: "),
                                              (404, "evomerge.searcher: ")])
def test_a_refused_key_or_an_unknown_model_ends_the_run_before_the_first_candidate(status, expected, llm, demo_recipe,
                                                                                   tmp_path):
    fake, url = llm
    fake.probe_script = [Status(status)]
    recipe = demo_recipe(searcher={"name": "llm", "endpoint": url, "model": "fake-model", "retries": 3})
    result = CliRunner().invoke(main, ["search", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    [line] = result.output.strip().splitlines()
    assert result.exit_code == 2 and line.startswith(f"error: {recipe}: {expected}") and f"HTTP {status}" in line
    assert len(fake.probes) == 1 and not fake.requests and not (tmp_path / "run").exists()


def test_an_endpoint_where_nothing_answers_is_refused_before_the_first_candidate(demo_recipe, tmp_path):
    recipe = demo_recipe(searcher={"name": "llm", "endpoint": "http://127.0.0.1:9/v1", "model": "m"})  # discard port
    result = CliRunner().invoke(main, ["search", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    [line] = result.output.strip().splitlines()
    assert result.exit_code == 2 and "evomerge.searcher.endpoint: nothing answers at http://127.0.0.1:9/v1" in line
    assert not (tmp_path / "run").exists()


def test_a_server_error_at_the_probe_is_a_passing_fault(llm, demo_recipe, tmp_path):
    fake, url = llm
    fake.probe_script, fake.default = [Status(500)], _any_valid_answer
    recipe = demo_recipe(eval={"limit": 5}, searcher={"name": "llm", "endpoint": url, "model": "fake-model", "batch": 3})
    start_search(recipe, tmp_path / "run", SearchOptions(evaluations=3, quiet=True)).run()
    evaluations = RunStore.open(tmp_path / "run").evaluations.finished()
    assert len(fake.probes) == 1 and [e.operator for e in evaluations] == ["start", "llm", "llm"]


def test_a_refused_key_during_the_run_is_not_retried_but_ends_it(llm):
    fake, url = llm
    fake.script = [Status(401)]
    searcher = _searcher(url)  # one retry
    with pytest.raises(EvomergeError, match=r"evomerge.searcher.api_key_env: .* refused the request \(HTTP 401"):
        searcher.ask()
    assert len(fake.requests) == 1
