"""An LLM-guided searcher: a language model behind any OpenAI-compatible chat endpoint
(vLLM, llama.cpp's server, Ollama, a hosted API) proposes the next candidates, is shown how
its earlier proposals scored with its own earlier reasoning, and reflects on them (the
feedback loop of Guided Evolution's "Evolution of Thought").

What the model answers is input from outside and is never trusted, and nothing in it is
executed: an answer that is not JSON, names unknown genes, is out of range or repeats a
point already proposed is repaired where it can be (clipped, completed from the best
candidate) or replaced by a Gaussian mutation of a good candidate. Every proposal records
its operator (`llm`, `llm-repaired`, `fallback`) and its rationale. A timeout, a refused
connection or a server error is retried with backoff, then that batch falls back: the run does
not stop for a passing fault. What no retry can mend ends the run in one line: one probe
request before the first candidate finds an endpoint where nothing answers, a key it refuses
(401, 403) or an endpoint or model it does not know (404); a 401, 403 or 404 later ends it too.
Every request's outcome goes through `external()`, so the run store's log keeps the model's
answers and a resumed run replays them instead of asking again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from evomerge.errors import SECTION, EvomergeError
from evomerge.searchers.base import Fitness, Proposal, Searcher, SearcherOptions, scalar
from evomerge.searchers.operators import GaussianMutation
from evomerge.searchers.registry import register

CHARS_PER_TOKEN = 4  # the budget's estimate of a token, whatever the model's tokenizer
SYSTEM = (
    "You help an evolutionary search over model-merge recipes (mergekit). Each candidate is a set of "
    "numbers, one per gene; its fitness (higher is better) is measured on held-in tasks. Study the results, "
    "then propose new candidates that should score higher. Answer with JSON only, in this form: "
    '{"reflection": "<what the results so far teach, at most three sentences>", '
    '"proposals": [{"genes": {"<gene name>": <number>, ...}, "rationale": "<one sentence>"}, ...]}. '
    "Use only the gene names listed, with values inside their ranges."
)


class LLMOptions(SearcherOptions):
    endpoint: str = Field(description="The OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="The model's name at the endpoint.")
    api_key_env: str = Field("OPENAI_API_KEY", description="The environment variable holding the API key "
                                                           "(local servers need none).")
    batch: PositiveInt = Field(4, description="Candidates proposed per request.")
    timeout: PositiveFloat = Field(60.0, description="Seconds a request may take.")
    retries: NonNegativeInt = Field(2, description="Retries of a request that timed out or failed, "
                                                   "before the batch falls back.")
    backoff: PositiveFloat = Field(1.0, description="Seconds before the first retry, doubled after each.")
    token_budget: PositiveInt = Field(3000, ge=500, description="The request's size in tokens, "
                                                                "counted as 4 characters each.")
    temperature: float = Field(0.7, ge=0, le=2, description="The model's sampling temperature.")
    mutation_scale: PositiveFloat = Field(0.1, description="The std of the fallback's Gaussian mutation, "
                                                           "in the unit cube.")

    def probe(self, source: Optional[Path] = None) -> None:
        """One request of one token: nothing answering, a refused key, an unknown endpoint or model end
        the run before it starts; a timeout or a server error is left to the run's retries."""
        openai = _openai()
        try:
            _client(self).chat.completions.create(model=self.model, messages=[{"role": "user", "content": "Say OK."}],
                                                   max_tokens=1, temperature=0)
        except openai.APITimeoutError:
            return
        except openai.APIConnectionError as error:
            raise EvomergeError(f"nothing answers at {self.endpoint} ({_one_line(error.__cause__ or error)}); start "
                                "the server or correct the URL", path=source, key=f"{SECTION}.searcher.endpoint") from None
        except openai.APIError as error:
            refusal = _refusal(error, self, source)
            if refusal is not None:
                raise refusal from None


@register("llm")
class LLMSearch(Searcher):
    Options = LLMOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _openai()
        if not self.genes:
            self.genes = [{"name": f"g{i}", "low": 0.0, "high": 1.0, "controls": "a number"} for i in range(self.dimension)]
        self.rng = np.random.default_rng(self.seed)
        self.history: List[Dict[str, Any]] = []  # id, x (unit cube), fitness, scores, operator, rationale
        self.reflections: List[str] = []
        self.answers = {"requested": 0, "unreachable": 0, "usable": 0, "repaired": 0, "fallback": 0}
        self._client = None

    @property
    def generation_size(self) -> int:
        return self.options.batch

    # -- ask ----------------------------------------------------------------------------------
    def ask(self) -> List[Proposal]:
        proposals: List[Proposal] = []
        if not self.history and not self.outstanding:
            proposals.append(self._proposal(self.x0, operator="start"))
        wanted = self.generation_size - len(proposals)
        outcome = self.external(lambda: self._request(self.messages(wanted)))
        self.answers["requested"] += outcome["requested"]
        self.answers["unreachable"] += outcome["unreachable"]
        answer = outcome["answer"]
        reflection, suggested = _parse(answer) if answer is not None else (None, [])
        if reflection:
            self.reflections.append(reflection[:600])
        for genes, rationale in suggested[:wanted]:
            x, repaired, parents = self._repair(genes)
            if x is None or self._seen(x):
                continue
            self.answers["repaired" if repaired else "usable"] += 1
            proposals.append(self._proposal(x, parents, "llm-repaired" if repaired else "llm",
                                            rationale=rationale[:400]))
        while len(proposals) < self.generation_size:
            self.answers["fallback"] += 1
            proposals.append(self._fallback())
        if reflection:  # stored once a batch, with its first proposal that is not the start
            next(p for p in proposals if p.operator != "start").info["reflection"] = reflection[:600]
        return proposals

    def _repair(self, genes: Any) -> Tuple[Optional[np.ndarray], bool, Tuple[int, ...]]:
        """A vector in the unit cube from the model's gene values, whether it needed repair, its parents."""
        if not isinstance(genes, dict):
            return None, True, ()
        best = self._best()
        x = np.array(best["x"]) if best else self.x0.copy()
        known = {g["name"]: i for i, g in enumerate(self.genes)}
        repaired = set(genes) - set(known) != set()
        given = 0
        for name, value in genes.items():
            if name not in known or isinstance(value, bool):
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                repaired = True
                continue
            if not np.isfinite(value):
                repaired = True
                continue
            gene = self.genes[known[name]]
            unit = (value - gene["low"]) / (gene["high"] - gene["low"])
            repaired |= not 0.0 <= unit <= 1.0
            x[known[name]] = float(np.clip(unit, 0.0, 1.0))
            given += 1
        if given == 0:
            return None, True, ()
        completed = given < len(self.genes)
        parents = (best["id"],) if completed and best else ()
        return x, repaired or completed, parents

    def _seen(self, x: np.ndarray) -> bool:
        earlier = [np.asarray(r["x"]) for r in self.history] + [p.genotype for p in self.outstanding.values()]
        return any(np.allclose(x, other, atol=1e-9) for other in earlier)

    def _fallback(self) -> Proposal:
        """A Gaussian mutation of one of the three best candidates (or of the start)."""
        ranked = sorted((r for r in self.history if r["fitness"] is not None), key=lambda r: -r["fitness"])[:3]
        mutation = GaussianMutation(rate=0.5, scale=self.options.mutation_scale)
        for _ in range(100):
            parent = ranked[int(self.rng.integers(len(ranked)))] if ranked else None
            x = np.clip(mutation.mutate(np.asarray(parent["x"]) if parent else self.x0, self.rng), 0.0, 1.0)
            if not self._seen(x):
                break
        return self._proposal(x, (parent["id"],) if parent else (), "fallback")

    def _best(self) -> Optional[Dict[str, Any]]:
        done = [r for r in self.history if r["fitness"] is not None]
        return max(done, key=lambda r: r["fitness"]) if done else None

    # -- the request --------------------------------------------------------------------------
    def messages(self, wanted: int) -> List[Dict[str, str]]:
        """The chat to send: the genes, the best candidates and a sample of the rest, the model's
        own proposals with their outcomes and rationales, its reflections; within the budget."""
        budget = self.options.token_budget * CHARS_PER_TOKEN - len(SYSTEM)
        head = ["Genes (name: range; what it controls):"]
        head += [f"- {g['name']}: [{g['low']:g}, {g['high']:g}]; {g['controls']}" for g in self.genes]
        tail = [f"Propose {wanted} new candidates, each different from every candidate above.",
                f"(This message is kept within about {self.options.token_budget} tokens, counting "
                f"{CHARS_PER_TOKEN} characters a token; older history is left out.)"]
        done = [r for r in self.history if r["fitness"] is not None]
        best = sorted(done, key=lambda r: -r["fitness"])[:3]
        own = [r for r in self.history if r["operator"].startswith("llm")][::-1]
        rest = [r for r in done if r not in best]
        sample = [rest[i] for i in self.rng.permutation(len(rest))]
        sections = [("Best candidates so far:", best), ("Your earlier proposals, newest first, and how they scored:", own),
                    ("Other evaluated candidates (a sample):", sample)]
        lines = head + (["Your earlier reflections: " + " | ".join(self.reflections[-3:])] if self.reflections else [])
        used = sum(len(line) + 1 for line in lines + tail)
        for title, records in sections:
            if not records:
                continue
            block = [title]
            for record in records:
                line = self._describe(record, with_rationale=title.startswith("Your"))
                if used + len(line) + len(title) + 2 > budget:
                    break
                block.append(line)
                used += len(line) + 1
            if len(block) > 1:
                lines += block
                used += len(title) + 1
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines + tail)}]

    def _describe(self, record: Dict[str, Any], with_rationale: bool) -> str:
        genes = ", ".join(f"{g['name']}={g['low'] + x * (g['high'] - g['low']):.4g}" for g, x in zip(self.genes, record["x"]))
        outcome = "failed" if record["fitness"] is None else f"fitness {record['fitness']:.4f}"
        scores = ", ".join(f"{k} {v:.3f}" for k, v in sorted(record["scores"].items()))
        why = f"; your rationale: {record['rationale']}" if with_rationale and record["rationale"] else ""
        return f"- #{record['id']} {outcome}" + (f" ({scores})" if scores else "") + f": {genes}{why}"

    def _request(self, messages: List[Dict[str, str]]) -> Dict[str, Any]:
        """The model's answer (None once every retry failed: that batch falls back) and how many
        requests it took, as plain data for the run store's log."""
        openai = _openai()
        if self._client is None:
            self._client = _client(self.options)
        outcome: Dict[str, Any] = {"answer": None, "requested": 0, "unreachable": 0}
        for attempt in range(self.options.retries + 1):
            outcome["requested"] += 1
            try:
                response = self._client.chat.completions.create(
                    model=self.options.model, messages=messages, temperature=self.options.temperature)
                outcome["answer"] = response.choices[0].message.content or ""
                return outcome
            except (openai.APIError, IndexError, AttributeError) as error:  # timeouts, refused connections, HTTP errors
                refusal = _refusal(error, self.options)
                if refusal is not None:
                    raise refusal from None
                outcome["unreachable"] += 1
                if attempt < self.options.retries:
                    time.sleep(self.options.backoff * 2 ** attempt)
        return outcome

    # -- tell ---------------------------------------------------------------------------------
    def _told(self, proposal: Proposal, fitness: Fitness, scores: Dict[str, float]) -> None:
        self.history.append({"id": proposal.id, "x": proposal.genotype.tolist(), "operator": proposal.operator,
                             "rationale": proposal.info.get("rationale", ""), "fitness": scalar(fitness),
                             "scores": scores})


def _openai():
    if importlib.util.find_spec("openai") is None:
        raise EvomergeError("the llm searcher needs the openai package: pip install 'evomerge[llm]'",
                            key=f"{SECTION}.searcher.name")
    import openai

    return openai


def _client(options: LLMOptions):
    return _openai().OpenAI(base_url=options.endpoint, max_retries=0, timeout=options.timeout,
                            api_key=os.environ.get(options.api_key_env) or "not-needed")


def _refusal(error: Exception, options: LLMOptions, source: Optional[Path] = None) -> Optional[EvomergeError]:
    """What no retry mends: a refused key, an endpoint or a model the server does not know."""
    openai = _openai()
    if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
        held = "holds a key it does not accept" if os.environ.get(options.api_key_env) else "is not set"
        return EvomergeError(f"{options.endpoint} refused the request (HTTP {error.status_code}: "
                             f"{_one_line(error)}); ${options.api_key_env} {held}", path=source,
                             key=f"{SECTION}.searcher.api_key_env")
    if isinstance(error, openai.NotFoundError):
        return EvomergeError(f"{options.endpoint} does not know model {options.model!r} or this route (HTTP 404: "
                             f"{_one_line(error)}); check `model` and `endpoint` (the base URL, often ending in /v1)",
                             path=source, key=f"{SECTION}.searcher")
    return None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


def _parse(answer: str) -> Tuple[Optional[str], List[Tuple[Any, str]]]:
    """(reflection, [(genes, rationale)]) from an answer that should be JSON, perhaps wrapped in
    prose or a code fence; nothing usable gives (None, [])."""
    for text in [answer] + re.findall(r"```(?:json)?\s*(.*?)```", answer, flags=re.S) + [_outer_braces(answer)]:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("proposals"), list):
            reflection = data.get("reflection") if isinstance(data.get("reflection"), str) else None
            found = [(p.get("genes"), str(p.get("rationale", ""))) for p in data["proposals"] if isinstance(p, dict)]
            return reflection, found
    return None, []


def _outer_braces(text: str) -> Optional[str]:
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if 0 <= start < end else None
