"""Webhooks called before and after a machine's upgrade (drain, uncordon).

A hook is ``POST url`` with a JSON body ``{"event", "rollout", "machine", "image"}``; any 2xx is
success. With a secret, the body's HMAC-SHA256 is sent as ``X-Bronze-Signature: sha256=HEX``
(GitHub's webhook convention), so the receiver can tell bronze from anyone else on the network.
Redirects are not followed; the timeout is the hook's own. Hooks must be idempotent: a hook that
was in flight when the server stopped is called again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import httpx

from server.inventory.secretbox import SecretBox


async def call_hook(
    hook: dict[str, Any], payload: dict[str, Any], secrets: SecretBox
) -> tuple[bool, str]:
    """POST the payload; 2xx is success. Signed with HMAC-SHA256 when the hook has a secret."""
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {"content-type": "application/json"}
    if hook.get("secret_enc"):
        key = secrets.decrypt(hook["secret_enc"]).encode()
        headers["x-bronze-signature"] = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    try:
        async with httpx.AsyncClient(timeout=hook["timeout_seconds"], follow_redirects=False) as c:
            resp = await c.post(hook["url"], content=body, headers=headers)
    except httpx.TimeoutException:
        return False, f"{hook['url']} did not answer within {hook['timeout_seconds']} s"
    except httpx.HTTPError as exc:
        return False, f"{hook['url']}: {type(exc).__name__}"
    if 200 <= resp.status_code < 300:
        return True, ""
    return False, f"{hook['url']} answered HTTP {resp.status_code}"
