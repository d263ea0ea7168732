"""Where a candidate's weights are computed: mergekit's planner and merge methods over resident
parents, written in place into one resident output model (materializer.py, composing
output_model.py, parent_cache.py, mergekit_tasks.py, apply.py and kernels.py), with evomerge's
weight-space noise (noise.py); multi-stage recipes merged stage after stage (multi_stage.py); a
routed candidate's layers copied into a resident model whose depth follows it (routed_model.py);
writing a recipe to a model folder with mergekit (write.py), which export and `evomerge merge`
use; the bytes a merge holds, from headers alone (footprint.py). Knows recipes, not scores.
"""

from evomerge.merge.materializer import Materializer, default_device

__all__ = ["Materializer", "default_device"]
