"""Where a candidate's time goes, by bucket: a sampling profiler of the main thread's Python stack.

A background thread looks at the main thread's stack every millisecond or so and charges the
time since its last look to the first bucket whose rule matches, innermost frame first. A torch
kernel shows as the Python line that called it (torch releases the GIL while it runs, so the
sampler sees it); the weights are wall time, so the buckets add up to the profiled time. Unlike
cProfile it adds no cost per Python call, which would inflate the Python-heavy buckets
(planning, lm-eval's bookkeeping) against the kernel-heavy ones.
"""

from __future__ import annotations

import linecache
import sys
import threading
import time
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Tuple

# (bucket, rule): a rule sees (path, function, source line) of one frame
Rule = Callable[[str, str, str], bool]


def _in(*parts: str) -> Rule:
    return lambda path, function, line: any(p in path for p in parts)


def _line(path_part: str, *words: str) -> Rule:
    return lambda path, function, line: path_part in path and any(w in line for w in words)


def _function(path_part: str, *names: str) -> Rule:
    return lambda path, function, line: path_part in path and function in names


RULES: List[Tuple[str, Rule]] = [
    ("scoring: tokenization", _in("tokenization_utils", "/tokenizers/", "tokenization_")),
    ("scoring: tokenization", _function("lm_eval/models/huggingface", "tok_encode", "tok_batch_encode", "tok_decode")),
    ("scoring: model forward", _in("transformers/models/", "torch/nn/modules/", "transformers/integrations/",
                                   "transformers/masking_utils", "transformers/modeling_")),
    ("scoring: model forward", _function("lm_eval/models/huggingface", "_model_call")),
    ("scoring: lm-eval bookkeeping", _in("lm_eval/", "evomerge/scoring/")),
    ("merge: noise", _in("evomerge/merge/noise")),
    ("merge: finiteness", _line("evomerge/merge/", "isfinite")),
    ("merge: finiteness", _function("evomerge/merge/", "finite_probe")),
    ("merge: planning", _function("mergekit/merge_methods/base", "validate_inputs", "validate_ids", "validate",
                                  "_bind_parameters", "_bind_group_parameters", "_bind_per_input",
                                  "validate_tensors", "__init__", "__post_init__")),
    ("merge: math", _in("mergekit/merge_methods/", "mergekit/sparsify", "evomerge/merge/kernels")),
    ("merge: copies", _line("evomerge/merge/", "copy_(", ".to(", "write(")),
    ("merge: planning", _in("mergekit/", "evomerge/merge/", "networkx/", "pydantic/")),
]


def bucket_of(frame) -> str:
    stack = []
    while frame is not None:
        stack.append(frame)
        frame = frame.f_back
    for frame in stack:
        path, function = frame.f_code.co_filename, frame.f_code.co_name
        line = linecache.getline(path, frame.f_lineno or 0)
        for bucket, rule in RULES:
            if rule(path, function, line):
                return bucket
    return "other"


class BucketSampler:
    """`with BucketSampler() as sampler: ...` then `sampler.seconds` (bucket -> wall seconds)."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.seconds: Dict[str, float] = defaultdict(float)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._target = threading.main_thread().ident

    def __enter__(self) -> "BucketSampler":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self._target)
            now = time.perf_counter()
            if frame is not None:
                self.seconds[bucket_of(frame)] += now - last
            last = now

    def table(self, per: int = 1) -> List[Tuple[str, float]]:
        """(bucket, seconds per candidate), in RULES' order then 'other'."""
        order = list(dict.fromkeys(b for b, _ in sorted(RULES, key=lambda r: r[0].startswith("scoring"))))
        return [(b, self.seconds.get(b, 0.0) / per) for b in order + ["other"]]


def print_table(sampler: "BucketSampler", per: int, title: str) -> None:
    rows = sampler.table(per)
    print(f"{title:<40}{'s per candidate':>16}{'share':>8}")
    total = sum(seconds for _, seconds in rows)
    for bucket, seconds in rows:
        print(f"  {bucket:<38}{seconds:>16.3f}{seconds / total:>8.0%}")
    print(f"  {'total':<38}{total:>16.3f}")
