"""The zoo is a fair merging problem: specialists of one base, each good at one skill."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.errors import EvomergeError
from evomerge.scoring.scorer import LMEvalScorer
from evomerge.scoring.tasks import TaskSuite
from evomerge.zoo import check
from evomerge.zoo.build import FAMILIES, ZooSettings, build_zoo
from evomerge.zoo.skills import ALPHABET, SKILLS
from evomerge.zoo.task_data import trained_on, write_task_data
from evomerge.zoo.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def report_tasks(tasks_dir) -> TaskSuite:
    return TaskSuite([f"zoo_{s}_report" for s in SKILLS], [tasks_dir])


def _accuracy(zoo, name: str, report_tasks: TaskSuite) -> dict:
    """A zoo model's accuracy on each skill, scored here with lm-eval on the first 100 report documents."""
    folder = zoo["dir"] / name
    scorer = LMEvalScorer(report_tasks, AutoModelForCausalLM.from_pretrained(folder),
                          AutoTokenizer.from_pretrained(folder), limit=100)
    metrics = scorer.score()
    return {skill: metrics[f"zoo_{skill}_report"]["acc"] for skill in SKILLS}


def _mean(accuracy: dict) -> float:
    return sum(accuracy.values()) / len(accuracy)


def test_every_specialist_masters_its_own_skill_and_not_the_others(any_zoo, report_tasks):
    for skill in SKILLS:
        accuracy = _accuracy(any_zoo, skill, report_tasks)
        assert accuracy[skill] >= check.MASTERED, (skill, accuracy)
        assert all(accuracy[other] <= check.UNMASTERED for other in SKILLS if other != skill), (skill, accuracy)


def test_the_base_masters_no_skill(any_zoo, report_tasks):
    base = _accuracy(any_zoo, "base", report_tasks)
    assert all(value <= check.UNMASTERED for value in base.values()), base


def test_zoo_models_are_ordinary_hugging_face_folders(zoo):
    folder = zoo["dir"] / "rev"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    assert model.config.model_type == "llama"
    assert 100_000 < model.num_parameters() < 1_000_000
    assert tokenizer.decode(tokenizer("r:abcde=edcba")["input_ids"]) == "r:abcde=edcba"


def test_the_tied_family_has_the_shape_of_small_real_models(tied_zoo):
    model = AutoModelForCausalLM.from_pretrained(tied_zoo["dir"] / "rev")
    config = model.config
    assert config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.weight" not in load_file(tied_zoo["dir"] / "rev" / "model.safetensors")
    assert config.num_key_value_heads < config.num_attention_heads


@pytest.mark.slow
def test_uniform_task_arithmetic_through_mergekit_yaml_beats_every_parent(any_zoo, tasks_dir, tmp_path):
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(any_zoo["dir"] / "base"),
        "models": [{"model": str(any_zoo["dir"] / s), "parameters": {"weight": check.MERGE_WEIGHT}} for s in SKILLS],
        "dtype": "float32",
    }
    (tmp_path / "ta.yaml").write_text(yaml.safe_dump(recipe))
    mergekit_yaml = Path(sys.executable).parent / "mergekit-yaml"
    subprocess.run([str(mergekit_yaml), str(tmp_path / "ta.yaml"), str(tmp_path / "out")],
                   check=True, capture_output=True)
    suite = TaskSuite([f"zoo_{s}_report" for s in SKILLS], [tasks_dir])
    merged = LMEvalScorer(
        suite,
        AutoModelForCausalLM.from_pretrained(tmp_path / "out"),
        AutoTokenizer.from_pretrained(tmp_path / "out"),
    ).score()
    merged_mean = _mean({s: merged[f"zoo_{s}_report"]["acc"] for s in SKILLS})
    best_parent = max(_mean(m["report_accuracy"]) for m in any_zoo["models"])
    assert merged_mean >= best_parent + check.MERGE_GAIN, (merged_mean, best_parent)


def test_the_check_names_every_model_and_skill_that_lacks_a_property():
    good = {"base": {"rev": 0.2, "sort": 0.1}, "rev": {"rev": 1.0, "sort": 0.4}, "sort": {"rev": 0.2, "sort": 0.95}}
    specialty = {"rev": "rev", "sort": "sort"}
    assert check.problems(good, specialty, merged={"rev": 0.95, "sort": 0.95}) == []
    bad = {**good, "sort": {"rev": 0.85, "sort": 0.5}}
    found = check.problems(bad, specialty, merged={"rev": 0.6, "sort": 0.6})
    assert found[0] == "sort should not master rev: 0.850 > 0.8"
    assert found[1] == "sort does not master its own skill sort: 0.500 < 0.9"
    assert found[2].startswith("the uniform task-arithmetic merge (mean 0.600) does not beat the best parent rev")


def test_a_second_build_reuses_the_zoo_and_a_missing_model_trains_it_again(zoo, tmp_path, monkeypatch):
    class Trained(Exception):
        """Raised in place of training, which would take minutes."""

    def train(*args, **kwargs):
        raise Trained

    monkeypatch.setattr("evomerge.zoo.build.train", train)
    copy = tmp_path / "zoo"
    shutil.copytree(zoo["dir"], copy)  # a copy: the shared zoo is never touched
    files = sorted(path for path in copy.rglob("*") if path.is_file())
    written = {path: path.stat().st_mtime_ns for path in files}
    settings = FAMILIES["llama"]
    again = build_zoo(copy, settings)  # nothing trained, nothing scored, nothing written
    assert {path: path.stat().st_mtime_ns for path in files} == written
    assert again == json.loads((copy / "manifest.json").read_text())
    with pytest.raises(Trained):  # other settings: another zoo
        build_zoo(copy, settings.model_copy(update={"seed": 1}))
    # A missing model trains the zoo again (a file that is there is trusted: its contents are not checked).
    (copy / "rev" / "model.safetensors").unlink()
    with pytest.raises(Trained):
        build_zoo(copy, settings)


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_build_without_the_zoos_properties_fails_loudly_and_fixed_seeds_give_the_same_weights(tmp_path):
    undertrained = ZooSettings(base_steps=20, specialist_steps=5)
    with pytest.raises(EvomergeError, match="the zoo lacks what it is for: .*rev does not master its own skill rev"):
        build_zoo(tmp_path / "one", undertrained)
    assert not (tmp_path / "one" / "manifest.json").exists()  # never reused as a good zoo
    second = build_zoo(tmp_path / "two", undertrained, verify=False)
    for entry in second["models"]:
        assert _digest(tmp_path / "one" / entry["path"]) == _digest(tmp_path / "two" / entry["path"])


def test_shipped_task_data_is_what_the_generator_writes(tasks_dir, tmp_path):
    write_task_data(tmp_path)
    shipped = sorted(p.name for p in (tasks_dir / "data").glob("*.jsonl"))
    assert shipped == sorted(p.name for p in tmp_path.glob("*.jsonl"))
    for name in shipped:
        assert (tasks_dir / "data" / name).read_text() == (tmp_path / name).read_text()


def test_search_report_and_confirm_splits_are_disjoint_and_the_confirm_split_never_trained_on(tasks_dir):
    trained = trained_on()
    for skill in SKILLS:
        prompts = {
            split: {json.loads(line)["prompt"] for line in (tasks_dir / "data" / f"zoo_{skill}.{split}.jsonl").open()}
            for split in ("search", "report", "confirm")
        }
        assert all(prompts.values()) and len(prompts["confirm"]) == 100
        assert not prompts["search"] & prompts["report"]
        assert not prompts["confirm"] & (prompts["search"] | prompts["report"] | trained)


def test_tokenizer_ids_are_the_training_ids():
    tokenizer = build_tokenizer()
    assert tokenizer(ALPHABET)["input_ids"] == list(range(len(ALPHABET)))


def test_tasks_load_from_any_working_directory(tasks_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = TaskSuite(["zoo_rev_search", "zoo_rev_report"], [tasks_dir])
    docs = list(suite.tasks["zoo_rev_report"].test_docs())
    assert len(docs) == 300 and docs[0]["prompt"].startswith("r:")
