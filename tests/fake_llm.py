"""A fake OpenAI-compatible chat endpoint on 127.0.0.1 for the LLM-guided searcher's tests.

It plays a script of answers, one per request: a message content (valid JSON, prose, broken
JSON, anything), an HTTP error status, or a stall longer than the client's timeout. When
the script runs out it answers with `default(request)`: for a real run, `LocalModel(folder)`
answers with a local model (bench/searchers.py --llm-model). Every request body is recorded.
The one-token probe a run sends before it starts is recorded apart and answered from its own
script (then "OK"), so `requests` holds the searcher's asks only.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator, List, Optional


@dataclass
class Status:
    code: int


@dataclass
class Stall:
    seconds: float


@dataclass
class FakeLLM:
    script: List[object] = field(default_factory=list)
    default: Optional[Callable[[dict], str]] = None
    requests: List[dict] = field(default_factory=list)
    probes: List[dict] = field(default_factory=list)
    probe_script: List[object] = field(default_factory=list)

    def prompt(self, index: int = -1) -> str:
        """The user message of a recorded request."""
        return next(m["content"] for m in self.requests[index]["messages"] if m["role"] == "user")

    def answer(self, body: dict) -> object:
        self.requests.append(body)
        if self.script:
            return self.script.pop(0)
        return self.default(body) if self.default else Status(503)

    def probe(self, body: dict) -> object:
        self.probes.append(body)
        return self.probe_script.pop(0) if self.probe_script else "OK"


class LocalModel:
    """`default` for a FakeLLM that answers with a local model folder (greedy unless the request
    asks for a temperature), e.g. SmolLM2-135M-Instruct from evomerge/zoo/real.py."""

    def __init__(self, folder: str, max_new_tokens: int = 400):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder).eval()
        self.max_new_tokens = max_new_tokens
        self.lock = threading.Lock()

    def __call__(self, body: dict) -> str:
        import torch

        ids = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt")
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        temperature = float(body.get("temperature") or 0)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with self.lock, torch.no_grad():
            out = self.model.generate(ids, max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.eos_token_id,
                                      **sampling)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _handler(fake: FakeLLM):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if not self.path.endswith("/chat/completions"):
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            answer = fake.probe(body) if body.get("max_tokens") == 1 else fake.answer(body)
            if isinstance(answer, Stall):
                time.sleep(answer.seconds)
                return self._send(200, _completion(body, "{}"))
            if isinstance(answer, Status):
                return self._send(answer.code, {"error": {"message": "scripted failure", "type": "server_error"}})
            self._send(200, _completion(body, str(answer)))

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a stall)
                pass

    return Handler


def _completion(body: dict, content: str) -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


@contextlib.contextmanager
def serve(fake: FakeLLM) -> Iterator[str]:
    """The endpoint's base URL while the server runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
