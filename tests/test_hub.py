"""Pushing an exported model folder, against a loopback imitation of the Hub (tests/fake_hub.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fake_hub import TOKEN
from safetensors.torch import save_file

from evomerge.errors import EvomergeError
from evomerge.outputs.hub import push_folder

REPO = "someone/merged-model"


@pytest.fixture
def model_folder(tmp_path) -> Path:
    """What `evomerge merge` exports, in miniature (the weights are a few hundred KB)."""
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 256}))
    (folder / "README.md").write_text("---\nlibrary_name: transformers\ntags: [merge, evomerge]\n---\n# Merged model\n")
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}}}))
    (folder / "mergekit_config.yml").write_text("merge_method: ties\nbase_model: base\ndtype: float32\n")
    save_file({"model.embed_tokens.weight": torch.randn(256, 256)}, folder / "model.safetensors")
    return folder


def test_push_creates_a_private_repo_and_uploads_every_file(hub, without_xet, model_folder):
    url = push_folder(model_folder, REPO, private=True)

    assert url == f"{hub.url}/{REPO}"
    [create] = hub.requests_to("POST", "/api/repos/create")
    # huggingface_hub 2.x sends private=True as "visibility": "private".
    assert create.json() == {"name": "merged-model", "organization": "someone", "visibility": "private", "type": "model"}
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert hub.files[REPO] == {path.name: path.read_bytes() for path in model_folder.iterdir()}
    assert hub.commits == [{"summary": "Upload merged model (evomerge)", "description": ""}]
    # The weights travelled as an LFS object (one PUT), not inside the commit.
    [put] = hub.requests_to("PUT", "/lfs-storage/.*")
    assert put.body == (model_folder / "model.safetensors").read_bytes()


def test_push_through_the_default_upload_pipeline(hub, tmp_path):
    """With hf_xet installed (huggingface_hub's default), upload_folder pipelines preupload and
    commits; small text files are committed inline, so xet storage is never contacted."""
    pytest.importorskip("hf_xet")
    folder = tmp_path / "card-only"
    folder.mkdir()
    (folder / "README.md").write_text("# Merged model\n")
    (folder / "mergekit_config.yml").write_text("merge_method: slerp\n")

    push_folder(folder, REPO)

    [create] = hub.requests_to("POST", "/api/repos/create")
    assert "visibility" not in create.json() and "private" not in create.json()  # the namespace's default
    assert hub.files[REPO] == {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_push_is_a_one_line_error(hub, monkeypatch, model_folder, status):
    if status == 401:
        monkeypatch.setenv("HF_TOKEN", "hf_revoked_token")
    else:
        hub.read_only = True

    with pytest.raises(EvomergeError) as caught:
        push_folder(model_folder, REPO)

    assert caught.value.key == "--push-to-hub"
    assert "\n" not in str(caught.value)
    assert f"HTTP {status}" in str(caught.value) and REPO in str(caught.value)
    assert hub.files == {}


def test_no_hub_to_reach_is_a_one_line_error(monkeypatch, model_folder):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(EvomergeError) as caught:
        push_folder(model_folder, REPO)
    assert caught.value.key == "--push-to-hub" and "\n" not in str(caught.value)
