"""How a run runs, as opposed to what it searches (the recipe): where, how many workers, what it may
trust, whether it shows progress. Built once at the command line, whose options are generated from these
fields and their descriptions (cli/options.py), and passed whole down to the loop, the workers and the
report, so a new setting is one field here rather than an argument threaded through every layer."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field


class RunOptions(BaseModel, frozen=True):
    """How a run runs, built once (the command line's options are these fields) and passed whole."""

    device: Optional[str] = Field(None, description="cuda, cuda:1, cpu ... (default: cuda when available).")
    trust_remote_code: bool = Field(False, description="Allow model code from the model folders to run.")
    allow_pickle: bool = Field(False, description="Allow pickle checkpoints (.bin/.pt), which can run code.")
    workers: int = Field(0, ge=0, description="Evaluate on N Ray workers, each with a GPU (or its --gpus-per-worker "
                                             "share, or a share of the CPUs); 0: in this process.")
    gpus_per_worker: Optional[float] = Field(None, gt=0, description="Each Ray worker's share of a GPU (0.5: two "
                                             "workers a GPU; default 1 where the cluster has GPUs).")
    ray_address: Optional[str] = Field(None, description="Join this Ray cluster (default: start a local one for "
                                                         "the run).")
    quiet: bool = Field(False, description="No progress bars.")
