"""`evomerge tree`: the family tree of models from their weights (tree/distances.py), joined
(tree/joining.py), drawn (tree/plots.py), with the models' lm-eval scores beside the leaves."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from evomerge.errors import EvomergeError
from evomerge.tree.distances import (
    Distances,
    ModelWeights,
    measure_distances,
    open_models,
    write_tables,
)
from evomerge.tree.joining import neighbor_joining


def score_models(models: Sequence[ModelWeights], tasks: Sequence[str], task_paths: Sequence[Path],
                 device: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """The phenotype: model name -> task -> its main metric (`acc` when the task has it), one model loaded at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.scoring.scorer import LMEvalScorer
    from evomerge.scoring.tasks import TaskSuite

    for path in task_paths:
        if not Path(path).is_dir():
            raise EvomergeError(f"expected a folder of lm-eval task YAML files, found nothing at {path}", key="--task-path")
    suite = TaskSuite(tasks, task_paths, key="--tasks")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    scores = {}
    for weights in models:
        model = AutoModelForCausalLM.from_pretrained(weights.folder, dtype=torch.float32).to(device)
        tokenizer = AutoTokenizer.from_pretrained(weights.folder)
        metrics = LMEvalScorer(suite, model, tokenizer).score()
        scores[weights.name] = {task: _main_metric(values) for task, values in metrics.items()}
        del model
    return scores


def _same_model(a: str, b: str) -> bool:
    return a == b or (Path(a).is_dir() and Path(b).is_dir() and Path(a).resolve() == Path(b).resolve())


def _main_metric(values: Dict[str, float]) -> float:
    if "acc" in values:
        return values["acc"]
    return next(value for name, value in values.items() if not name.endswith("_stderr"))


def write_family_tree(references: Sequence[str], out: Path, *, reference: Optional[str] = None,
                      tasks: Sequence[str] = (), task_paths: Sequence[Path] = (),
                      device: Optional[str] = None) -> Tuple[Distances, List[Path]]:
    """tree.nwk, tree.png, distances.csv, layers.csv, layers.png (and scores.csv with tasks) in `out`.

    A `reference` not among the models joins them as a leaf; the tree is rooted at it.
    """
    from Bio import Phylo

    from evomerge.tree.plots import draw_layers, draw_tree

    references = list(references)
    same = [r for r in references if reference is not None and _same_model(r, reference)]
    if reference is not None and not same:
        references.append(reference)
    models = open_models(references)
    root = models[references.index(same[0] if same else reference)].name if reference is not None else None
    scores = score_models(models, tasks, task_paths, device) if tasks else None
    distances = measure_distances(models)
    tree = neighbor_joining(distances, root)
    out.mkdir(parents=True, exist_ok=True)
    newick = out / "tree.nwk"
    Phylo.write(tree, newick, "newick")
    files = [newick, *write_tables(distances, out)]
    files.append(draw_tree(tree, out / "tree.png", scores))
    files.append(draw_layers(distances, out / "layers.png"))
    if scores:
        files.append(_write_scores(scores, out / "scores.csv"))
    return distances, files


def _write_scores(scores: Dict[str, Dict[str, float]], path: Path) -> Path:
    tasks = list(next(iter(scores.values())))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model"] + tasks)
        for name, values in scores.items():
            writer.writerow([name] + [f"{values[task]:.6g}" for task in tasks])
    return path
