"""Publishes an exported model folder to the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from evomerge.errors import EvomergeError


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    commit_message: str = "Upload merged model (evomerge)",
) -> str:
    """Create the repo (exist_ok) and upload the whole folder; returns the repo URL.

    The endpoint is read from HF_ENDPOINT at call time: huggingface_hub reads it only once, at
    import, so its module-level functions would ignore a later change. A token of None lets
    huggingface_hub find one itself (HF_TOKEN, then the cached login). `private=None` leaves the
    visibility to the Hub's default for the namespace.
    """
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT", "").rstrip("/") or None, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model", commit_message=commit_message)
    except HfHubHTTPError as err:
        raise EvomergeError(_one_line(repo_id, api.endpoint, err), key="--push-to-hub") from err
    except (httpx2.HTTPError, OSError, RuntimeError) as err:  # no connection; failed file uploads
        detail = " ".join(str(err).split())
        raise EvomergeError(f"cannot push to {repo_id} on {api.endpoint}: {detail}", key="--push-to-hub") from err
    return str(url)


def _one_line(repo_id: str, endpoint: str, err: HfHubHTTPError) -> str:
    """huggingface_hub's messages span several lines; evomerge reports errors in one."""
    status = err.response.status_code
    detail = " ".join((err.server_message or err.response.reason_phrase or "").split())
    return f"cannot push to {repo_id} on {endpoint}: HTTP {status}" + (f" ({detail})" if detail else "")
