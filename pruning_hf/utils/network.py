"""Whether the Hugging Face Hub answers, asked once: huggingface_hub, transformers and datasets retry a
refused connection for 30-50 s (``Retrying in 8s`` lines) before failing; one short probe says so in seconds.
"""

from __future__ import annotations

import os
import time

__all__ = ["hub_endpoint", "hub_unreachable", "PROBE_TIMEOUT"]

PROBE_TIMEOUT = 5.0  # seconds for the one request that tells whether the Hub answers
_PROBES: dict[str, tuple[float, str | None]] = {}  # endpoint -> (when, reason or None)


def hub_endpoint(endpoint: str | None = None) -> str:
    """The Hub URL in use: ``endpoint``, else ``HF_ENDPOINT``, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_unreachable(endpoint: str | None = None) -> str | None:
    """Why the Hub cannot be used now, or ``None`` when it answers.

    ``"HF_HUB_OFFLINE is set"`` in offline mode; otherwise one short request to the endpoint (any HTTP
    answer counts as reachable), remembered for a minute.
    """
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    url = hub_endpoint(endpoint)
    seen = _PROBES.get(url)
    if seen is not None and time.monotonic() - seen[0] < 60:
        return seen[1]
    from huggingface_hub.utils import get_session

    try:
        get_session().head(url, timeout=PROBE_TIMEOUT, follow_redirects=False)
        reason = None
    except Exception as err:  # connection refused, DNS failure, timeout, proxy errors
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = f"cannot reach {url}: {type(err).__name__}{f': {detail}' if detail else ''}"
    _PROBES[url] = (time.monotonic(), reason)
    return reason
