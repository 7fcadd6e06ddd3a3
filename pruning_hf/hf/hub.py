"""Publishing pruned checkpoints on the Hugging Face Hub (``create_repo`` + ``upload_folder``).

The token comes from the ``token`` argument, else ``HF_TOKEN`` or the stored ``hf auth login``; it is
sent only in the ``Authorization`` header and never printed, logged, or written into a card, a report
or an error message. ``README.md`` is re-rendered for the target repo before uploading; a failed push
puts the previous one back, so it leaves the local folder as it was, and is safe to run again: the repo
is created with ``exist_ok=True`` and the upload re-sends the whole folder. huggingface_hub's retries of
transient server errors are counted, not printed: a failure is one line that says how often it retried.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from ..utils.network import hub_endpoint
from ..utils.storage import atomic_file
from .cards import write_model_card
from .files import CARD_FILE

__all__ = ["HubPushError", "push_folder", "push_model"]


class HubPushError(RuntimeError):
    """Publishing failed (network, authentication, permissions); the message says what to do."""


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"repo id {repo_id!r} must look like USER/NAME or ORG/NAME")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"repo id {repo_id!r} is not valid: {str(err).splitlines()[0]}") from None
    return repo_id


def _preflight(repo_id: str, token: str | None) -> str:
    """Check the repo id, offline mode and the token before any work; returns the token to use."""
    from huggingface_hub import constants, get_token

    _check_repo_id(repo_id)
    if constants.is_offline_mode():
        raise HubPushError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset HF_HUB_OFFLINE and retry")
    token = token or get_token()
    if not token:
        raise HubPushError("no Hugging Face token: pass token=/--token, set HF_TOKEN, or run `hf auth login`")
    return token


class _RetryCounter(logging.Filter):
    """While active, drops huggingface_hub's per-retry log lines ("Retrying in 8s [Retry 4/5]", "HTTP Error
    503 thrown while requesting ...") and counts the retries, for one summary line."""

    LOGGER = "huggingface_hub.utils._http"

    def __init__(self) -> None:
        super().__init__()
        self.retries = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(("Retrying in", "Rate limited.")):
            self.retries += 1
            return False
        return "thrown while requesting" not in message

    def __enter__(self) -> "_RetryCounter":
        logging.getLogger(self.LOGGER).addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger(self.LOGGER).removeFilter(self)


def _restore_file(path: Path, content: bytes | None) -> None:
    """Put ``path`` back as it was (``None``: it did not exist)."""
    if content is None:
        path.unlink(missing_ok=True)
        return
    with atomic_file(path) as tmp:
        tmp.write_bytes(content)


def _upload(folder: Path, repo_id: str, *, what: str, untouched: str, private: bool | None, token: str,
            commit_message: str | None, endpoint: str | None) -> str:
    """Create the repo and upload ``folder``; a failure is one HubPushError naming ``what`` was pushed."""
    from huggingface_hub import HfApi

    url = hub_endpoint(endpoint)
    api = HfApi(endpoint=url, token=token)
    with _RetryCounter() as counter:
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                              commit_message=commit_message or f"Upload pruned model ({folder.name}) with pruning_hf",
                              ignore_patterns=[".*"])
        except Exception as err:  # HTTP errors, connection errors (httpx), timeouts, OS errors
            reason = _redact(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__, token)
            retried = f" (huggingface_hub retried {counter.retries} times)" if counter.retries else ""
            raise HubPushError(f"could not push {what} to {url}/{repo_id}: {type(err).__name__}: "
                               f"{reason.rstrip('.')}{retried}. {untouched}") from None
    return f"{url}/{repo_id}"


def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None, endpoint: str | None = None) -> str:
    """Upload a saved pruned checkpoint folder to ``repo_id``; returns the repo URL.

    The model card is re-rendered with the repo id first (its load snippet names the repo); if the push
    fails, the previous card is put back. ``private`` applies when the repo is created; an existing repo
    keeps its visibility.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a saved checkpoint folder (no config.json)")
    token = _preflight(repo_id, token)
    card = folder / CARD_FILE
    previous = card.read_bytes() if card.is_file() else None
    write_model_card(folder, repo_id=repo_id)
    try:
        return _upload(folder, repo_id, what=repr(str(folder)), private=private, token=token,
                       commit_message=commit_message, endpoint=endpoint,
                       untouched="The local files are intact; run the same push again to retry")
    except BaseException:
        _restore_file(card, previous)
        raise


def push_model(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
               commit_message: str | None = None, endpoint: str | None = None) -> str:
    """``model.push_to_hub`` of pruned models: save (weights, tokenizer, report, card) to a temporary
    folder, then upload it. Returns the repo URL. A failure names the model, not the temporary folder
    (deleted by the time the error is read)."""
    token = _preflight(repo_id, token)
    with tempfile.TemporaryDirectory(prefix="pruning_hf-push-") as tmp:
        folder = Path(tmp) / repo_id.split("/")[-1]
        self.save_pretrained(folder)
        write_model_card(folder, repo_id=repo_id)
        name = getattr(getattr(self, "config", None), "pruned_from", None) or type(self).__name__
        return _upload(folder, repo_id, what=f"the pruned model (from {name!r})", private=private, token=token,
                       commit_message=commit_message, endpoint=endpoint,
                       untouched="Nothing was changed locally; call push_to_hub again to retry")
