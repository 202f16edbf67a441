"""The champion gate's signature: what lets deploy and serve tell a version the gate promoted from one
whose alias another hand moved.

Every pipeline step holds the pipeline's MLflow login, and MLflow grants moving an alias with the right
to write versions, so ``champion`` alone proves nothing. The gate signs each version it promotes with a
key only it and the deploy step hold (:data:`GATE_KEY_ENV`, from the Secret ``sherlock-gate``);
:func:`sherlock.tracking.check_deployable` checks the signature where the key is present.
"""

from __future__ import annotations

import hashlib
import hmac
import os

GATE_KEY_ENV = "SHERLOCK_GATE_KEY"  # the gate's signing key (the Secret sherlock-gate on the platform)
GATE_SIGNATURE_TAG = "gate.signature"  # a promoted version's tag: gate_signature by the gate's key
MIN_GATE_KEY_LENGTH = 32


class GateKeyError(ValueError):
    """The gate's key is present but too short to sign with."""


def gate_key() -> bytes | None:
    """The gate's signing key from :data:`GATE_KEY_ENV`, or None where this process holds none."""
    key = os.environ.get(GATE_KEY_ENV, "")
    if key and len(key) < MIN_GATE_KEY_LENGTH:
        raise GateKeyError(f"${GATE_KEY_ENV} holds {len(key)} characters; the gate's key needs "
                           f"{MIN_GATE_KEY_LENGTH} or more (openssl rand -hex 32)")
    return key.encode() or None


def gate_signature(version, key: bytes, digest_tag: str) -> str:
    """HMAC-SHA256, by ``key``, of what the gate vouches for when it promotes ``version`` (an MLflow
    ``ModelVersion``): the model, the version, its checkpoint's URI and SHA256SUMS digest (tag
    ``digest_tag``), the pipeline run and the stage run that logged it.
    """
    statement = "\n".join([version.name, str(version.version), version.tags.get("checkpoint_uri", ""),
                           version.tags.get(digest_tag, ""), version.tags.get("pipeline_run_id", ""),
                           version.run_id or ""])
    return hmac.new(key, statement.encode(), hashlib.sha256).hexdigest()


def signed(version, key: bytes, digest_tag: str) -> bool:
    """Whether ``version`` carries the gate's signature by ``key`` (compared in constant time)."""
    return hmac.compare_digest(version.tags.get(GATE_SIGNATURE_TAG, ""), gate_signature(version, key, digest_tag))
