"""The zoo is a fair merging problem: specialists of one base, each good at one skill."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.evaluate import LMEvalScorer, TaskSuite
from evomerge.zoo.build import ZooSettings, build_zoo
from evomerge.zoo.skills import ALPHABET, SKILLS, write_task_data
from evomerge.zoo.tokenizer import build_tokenizer


def _accuracy(zoo, name):
    return next(m for m in zoo["models"] if m["name"] == name)["report_accuracy"]


def test_every_specialist_masters_its_own_skill_and_not_the_others(zoo):
    base = _accuracy(zoo, "base")
    for skill in SKILLS:
        own = _accuracy(zoo, skill)
        assert own[skill] >= base[skill] + 0.30, (skill, own, base)
        for other in SKILLS:
            if other != skill:
                assert own[other] <= _accuracy(zoo, other)[other] - 0.15, (skill, other)


def test_zoo_models_are_ordinary_hugging_face_folders(zoo):
    folder = zoo["dir"] / "rev"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    assert model.config.model_type == "llama"
    assert 100_000 < model.num_parameters() < 1_000_000
    assert tokenizer.decode(tokenizer("r:abcde=edcba")["input_ids"]) == "r:abcde=edcba"


def test_uniform_task_arithmetic_through_mergekit_yaml_beats_the_base(zoo, tasks_dir, tmp_path):
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(zoo["dir"] / "base"),
        "models": [{"model": str(zoo["dir"] / s), "parameters": {"weight": 0.5}} for s in SKILLS],
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
    merged_mean = sum(merged[f"zoo_{s}_report"]["acc"] for s in SKILLS) / len(SKILLS)
    base_mean = sum(_accuracy(zoo, "base").values()) / len(SKILLS)
    assert merged_mean > base_mean + 0.2, (merged_mean, base_mean)


def test_a_second_build_reuses_the_zoo(zoo):
    manifest_path = zoo["dir"] / "manifest.json"
    before = manifest_path.stat().st_mtime_ns
    again = build_zoo(zoo["dir"])
    assert manifest_path.stat().st_mtime_ns == before
    assert again["models"] == zoo["models"]


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_fixed_seeds_give_the_same_weights(tmp_path):
    tiny = ZooSettings(base_steps=20, specialist_steps=5)
    first = build_zoo(tmp_path / "one", tiny)
    second = build_zoo(tmp_path / "two", tiny)
    for entry in first["models"]:
        assert _digest(tmp_path / "one" / entry["path"]) == _digest(tmp_path / "two" / entry["path"])
    assert [m["report_accuracy"] for m in first["models"]] == [m["report_accuracy"] for m in second["models"]]


def test_shipped_task_data_is_what_the_generator_writes(tasks_dir, tmp_path):
    write_task_data(tmp_path)
    shipped = sorted(p.name for p in (tasks_dir / "data").glob("*.jsonl"))
    assert shipped == sorted(p.name for p in tmp_path.glob("*.jsonl"))
    for name in shipped:
        assert (tasks_dir / "data" / name).read_text() == (tmp_path / name).read_text()


def test_search_and_report_splits_are_disjoint(tasks_dir):
    for skill in SKILLS:
        prompts = {
            split: {json.loads(line)["prompt"] for line in (tasks_dir / "data" / f"zoo_{skill}.{split}.jsonl").open()}
            for split in ("search", "report")
        }
        assert prompts["search"] and prompts["report"]
        assert not prompts["search"] & prompts["report"]


def test_tokenizer_ids_are_the_training_ids():
    tokenizer = build_tokenizer()
    assert tokenizer(ALPHABET)["input_ids"] == list(range(len(ALPHABET)))


def test_tasks_load_from_any_working_directory(tasks_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = TaskSuite(["zoo_rev_search", "zoo_rev_report"], [tasks_dir])
    docs = list(suite.tasks["zoo_rev_report"].test_docs())
    assert len(docs) == 300 and docs[0]["prompt"].startswith("r:")
