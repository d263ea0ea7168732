"""A tiny OpenAI-compatible chat endpoint on 127.0.0.1 backed by a local model folder
(e.g. recipes/zoo-real/base, SmolLM2-135M-Instruct), for running the `llm` searcher for real
with no hosted API. One request at a time, greedy unless `temperature` > 0.

    python bench/llm_server.py recipes/zoo-real/base [--port 8765] [--max-new-tokens 400]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class LocalChat:
    def __init__(self, folder: str, max_new_tokens: int = 400):
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder).eval()
        self.max_new_tokens = max_new_tokens
        self.lock = threading.Lock()

    def complete(self, messages, temperature: float) -> str:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        if not isinstance(ids, torch.Tensor):  # a BatchEncoding in newer transformers
            ids = ids["input_ids"]
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with self.lock, torch.no_grad():
            out = self.model.generate(ids, max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.eos_token_id, **sampling)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _handler(chat: LocalChat):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            content = chat.complete(body["messages"], float(body.get("temperature") or 0))
            data = json.dumps({"id": "local", "object": "chat.completion", "created": 0, "model": body.get("model"),
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@contextlib.contextmanager
def serve(folder: str, port: int = 0, max_new_tokens: int = 400) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(LocalChat(folder, max_new_tokens)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--max-new-tokens", type=int, default=400)
    args = parser.parse_args()
    with serve(args.folder, args.port, args.max_new_tokens) as url:
        print(f"serving {args.folder} at {url} (Ctrl-C stops)", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
