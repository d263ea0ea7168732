"""`evomerge tree`: time and peak memory, streamed vs loading every model whole, side by side.

Each measurement runs in a fresh process and reports how much its peak resident memory grew
over the models (after imports and reading the safetensors headers), as a multiple of one
model's size. First the zoo's five models (the whole command: distances, tree, tables and
pictures), then N synthetic models of --model-mb each, N = 4, 8, 16: the streamed distances
against `safetensors.torch.load_file` of every model.

    python bench/tree_memory.py [--model-mb 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch
from safetensors.torch import save_file

from evomerge.paths import DEFAULT_ZOO_DIR
from evomerge.zoo.build import build_zoo

_MEASURE = textwrap.dedent("""
    import json, pathlib, re, sys, time
    import torch
    torch.set_num_threads(1)
    from safetensors.torch import load_file
    from evomerge.tree.distances import measure_distances, open_models
    from evomerge.tree.family import write_family_tree

    def kib(field):
        return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

    mode, out, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
    models = open_models(paths)
    if mode == "streamed":  # libraries' lazily loaded code and buffers, before the peak is reset
        measure_distances(models[:3])
    elif mode == "whole":
        float(next(iter(load_file(next(iter(models[0].tensors.values()))[0]).values())).sum())
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current size
    before = kib("VmRSS")
    start = time.perf_counter()
    if mode == "command":
        write_family_tree(paths, pathlib.Path(out))
    elif mode == "streamed":
        measure_distances(models)
    else:  # every model whole, each tensor read once
        held = [load_file(shard) for m in models for shard in sorted({s for s, _ in m.tensors.values()})]
        total = sum(float(t.sum()) for tensors in held for t in tensors.values())
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "grown": (kib("VmHWM") - before) * 1024, "peak": kib("VmHWM") * 1024,
                      "model": models[0].nbytes}))
""")


def _measure(mode: str, paths, out: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", _MEASURE, mode, str(out), *map(str, paths)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _synthetic(folder: Path, count: int, model_mb: int) -> list:
    rows = model_mb * 2**20 // (4 * 1024 * 8)
    generator = torch.Generator().manual_seed(0)
    base = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn((rows, 1024), generator=generator) for i in range(8)}
    paths = []
    for index in range(count):
        path = folder / f"m{index}"
        path.mkdir()
        save_file({name: value + 0.01 * torch.randn(value.shape, generator=generator) for name, value in base.items()},
                  path / "model.safetensors")
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-mb", type=int, default=32)
    args = parser.parse_args()
    build_zoo(DEFAULT_ZOO_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        zoo = [DEFAULT_ZOO_DIR / name for name in ("base", "pair", "rev", "sort", "shift")]
        figures = _measure("command", zoo, tmp / "zoo-tree")
        print(f"zoo, 5 models of {figures['model'] / 2**20:.2f} MB: evomerge tree took {figures['seconds']:.2f} s, "
              f"peak memory {figures['peak'] / 2**20:.0f} MB (the libraries, the plots and the models)")
        print(f"\n{'models':>6} {'streamed s':>11} {'streamed growth':>16} {'whole s':>8} {'whole growth':>13}   (growth in models)")
        for count in (4, 8, 16):
            folder = tmp / f"n{count}"
            folder.mkdir()
            paths = _synthetic(folder, count, args.model_mb)
            streamed = _measure("streamed", paths, folder)
            whole = _measure("whole", paths, folder)
            print(f"{count:>6} {streamed['seconds']:>11.2f} {streamed['grown'] / streamed['model']:>16.2f} "
                  f"{whole['seconds']:>8.2f} {whole['grown'] / whole['model']:>13.2f}")


if __name__ == "__main__":
    main()
