"""The resident output model: mergekit's output config and tokenizer, and one model built
from that config on the device, whose weights every candidate overwrites in place.

The output config is mergekit's, but its per-layer lists (`layer_types`, ...) follow the layers
the recipe's slices take, so a route to another depth loads in transformers (mergekit 0.1.5 sets
the layer count alone; write.py has `run_merge` write this config)."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
from mergekit.architecture import ModelArchitecture, get_architecture_info
from mergekit.common import dtype_from_name, set_config_value
from mergekit.config import MergeConfiguration
from mergekit.graph import Executor, Task
from mergekit.merge import _get_donor_model, _model_out_config, _update_config_vocab
from mergekit.options import MergeOptions
from mergekit.tokenizer import BuildTokenizer, TokenizerInfo
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.initialization import no_init_weights

from evomerge.recipe.route import per_layer_lists


def output_config(start: MergeConfiguration, options: MergeOptions) -> Tuple[ModelArchitecture, Any]:
    """mergekit's architecture for the recipe and the config of the model it writes, from configs alone."""
    arch = get_architecture_info(start, options)
    return arch, routed_out_config(start, arch, trust_remote_code=options.trust_remote_code)


def routed_out_config(merge: MergeConfiguration, arch: ModelArchitecture, trust_remote_code: bool = False):
    """mergekit's `_model_out_config`, each per-layer list's entry for an output layer taken from the layer
    it is: its slice's first source's (as mergekit counts the layers). Every model the slices or
    `base_model` name must have the same per-layer lists."""
    config = _model_out_config(merge, arch, trust_remote_code=trust_remote_code)
    if not merge.slices or len(arch.modules) != 1:
        return config
    module = next(iter(arch.modules.values())).architecture
    key = module.num_layers_config_key()
    taken = [(s.sources[0].model, i) for s in merge.slices for i in range(*s.sources[0].layer_range)]
    named = ([merge.base_model] if merge.base_model else []) + [s.sources[0].model for s in merge.slices]
    lists = {model: per_layer_lists(model.config(trust_remote_code=trust_remote_code), key)
             for model in dict.fromkeys(named)}
    for name in dict.fromkeys(name for found in lists.values() for name in found):
        lacking = [str(model) for model, found in lists.items() if name not in found]
        if lacking:
            raise ValueError(f"`{name}` is a per-layer list of some routed models' configs but not of {lacking[0]}'s")
        set_config_value(config, name, [lists[model][name][i] for model, i in taken])
    return config


def output_tokenizer(start: MergeConfiguration, planned: List[Task], out_config, arch: ModelArchitecture,
                     options: MergeOptions):
    """mergekit's merged tokenizer when the recipe asks for one (its vocabulary size goes into
    `out_config`, as mergekit writes it), else the donor's."""
    builders = [t for t in planned if isinstance(t, BuildTokenizer)]
    if builders:
        info = next(v for _, v in Executor(builders).run(quiet=True) if isinstance(v, TokenizerInfo))
        pad = start.tokenizer.pad_to_multiple_of if start.tokenizer else None
        _update_config_vocab(out_config, arch, info.tokenizer, pad_to_multiple_of=pad)
        return info.tokenizer
    _, donor_path = _get_donor_model(start, options)
    return AutoTokenizer.from_pretrained(donor_path, trust_remote_code=options.trust_remote_code)


def resident_model(out_config, device: torch.device, dtype: Optional[str], trust_remote_code: bool = False):
    """The output model on `device` in `dtype` (default: the config's), its weights left uninitialized."""
    with torch.device(device), no_init_weights():
        model = AutoModelForCausalLM.from_config(
            out_config, dtype=dtype_from_name(dtype) or getattr(out_config, "dtype", None),
            trust_remote_code=trust_remote_code)
    # from_config leaves tied weights (tie_word_embeddings: lm_head = embed_tokens) untied
    # under transformers 5; tie them as from_pretrained and mergekit's output do.
    model.tie_weights()
    return model.eval().requires_grad_(False)
