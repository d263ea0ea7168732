"""A routed candidate's layer sequence as a picture: which model, which layer, which scale.

One bar per output layer, in the order a token passes through them, coloured by the model the
layer comes from, labelled with its layer there, and as tall as its scale (1 when unscaled); the
ends say where the embeddings and the final norm and head come from.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import List, Tuple

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from mergekit.common import ModelReference
from mergekit.config import MergeConfiguration

from evomerge.files import write_atomically
from evomerge.recipe.route import Hop, from_merge


def route_of(recipe_text: str) -> Tuple[List[Hop], str]:
    """The route and the embeddings' model of a stored passthrough recipe, the final merge of a multi-stage
    one (ValueError if it is not one)."""
    data = list(yaml.safe_load_all(recipe_text))[-1]
    data.pop("name", None)
    data.pop("evomerge", None)
    return from_merge(MergeConfiguration.model_validate(data),
                      lambda model: ModelReference.parse(model).config().num_hidden_layers)


def save_route(hops: List[Hop], ends: str, title: str, path: Path) -> None:
    figure = draw_route(hops, ends, title)
    FigureCanvasAgg(figure)
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120, metadata={"Software": None})
    write_atomically(path, image.getvalue())


def draw_route(hops: List[Hop], ends: str, title: str) -> Figure:
    names = list(dict.fromkeys([_name(ends)] + [_name(h.model) for h in hops]))
    colours = {name: f"C{index}" for index, name in enumerate(names)}
    figure = Figure(figsize=(max(6.0, 1.0 + 0.55 * len(hops)), 3.2), layout="constrained")
    axes = figure.add_subplot()
    heights = [1.0 if h.scale is None else h.scale for h in hops]
    axes.bar(range(len(hops)), heights, color=[colours[_name(h.model)] for h in hops], edgecolor="black", width=0.85)
    for position, (hop, height) in enumerate(zip(hops, heights)):
        axes.text(position, height / 2, f"L{hop.layer}", ha="center", va="center", fontsize=8, color="white")
        if hop.scale is not None:
            axes.text(position, height, f"{hop.scale:.2f}", ha="center", va="bottom", fontsize=7)
    axes.axhline(1.0, color="grey", linewidth=0.6, linestyle="--")
    axes.set_xticks(range(len(hops)), [str(i) for i in range(len(hops))], fontsize=7)
    axes.set_xlabel(f"output layer (embeddings, final norm and head: {_name(ends)})")
    axes.set_ylabel("scale of the output projections")
    axes.set_ylim(0, max(heights + [1.0]) * 1.2)
    axes.legend(handles=[Patch(color=colours[n], label=n) for n in names], loc="upper right", fontsize=8,
                ncols=len(names))
    axes.set_title(title)
    return figure


def describe_route(hops: List[Hop]) -> str:
    return ", ".join(f"{_name(h.model)}:{h.layer}" + (f"×{h.scale:.2f}" if h.scale is not None else "") for h in hops)


def _name(model: str) -> str:
    return Path(model).name or model
