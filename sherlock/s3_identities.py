"""The object store's identities: one per workload, least privilege, keys from Secrets.

The platform's policy (``identities.json``, rendered by ``manifests/base/seaweedfs.yaml`` and the
chart into the ConfigMap ``sherlock-s3-identities``) names each identity, the Secret that holds its
keys and its SeaweedFS actions. SeaweedFS's S3 gateway reads a *configuration* that holds the keys
themselves (``-s3.config``); :func:`seaweed_config` builds it from the policy and the Secrets mounted
as files (``<keys>/<identity>/AWS_ACCESS_KEY_ID`` and ``…/AWS_SECRET_ACCESS_KEY``), in the gateway
pod's init container (``sherlock s3-identities``), so no key is ever written into a manifest. Rotating
a key is: change its Secret, restart the gateway (the init container builds the configuration again).

An action is ``Admin``, ``Read``, ``Write``, ``List`` or ``Tagging``, limited to a bucket
(``Read:sherlock``) or to a key prefix (``Write:sherlock/runs/*``), as SeaweedFS's identity file
spells them. An unlimited action other than the one ``Admin`` identity's is refused: every workload's
reach is named. (A prefix-limited identity must name its region, ``AWS_REGION``: without it an S3 client
first asks the bucket's location, which is a bucket-wide read.)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")
NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
SEGMENT = r"(?!\.\.?/)[A-Za-z0-9._-]+/"  # one key prefix segment, never . or ..
ACTION = re.compile(rf"^(?P<verb>{'|'.join(ACTIONS)})(:(?P<bucket>{BUCKET})(/(?P<prefix>({SEGMENT})+)\*)?)?$")
KEY_FILES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
ACCESS_KEY = re.compile(r"^[A-Za-z0-9]{16,128}$")
MIN_SECRET_KEY = 32


class IdentityError(ValueError):
    """The identity policy or a key Secret is unusable (what is wrong, and where)."""


def check_policy(policy: dict) -> list[dict]:
    """The identities of ``policy`` (``{"identities": [{"name", "secret", "actions"}, …]}``) once each is
    valid: unique lowercase names and Secrets, actions in SeaweedFS's grammar, exactly one identity
    with the unlimited ``Admin`` action and no other unlimited action anywhere.
    """
    identities = policy.get("identities") if isinstance(policy, dict) else None
    if not isinstance(identities, list) or not identities:
        raise IdentityError("the policy needs a non-empty list 'identities'")
    names, secrets, admins = set(), set(), []
    for number, identity in enumerate(identities, 1):
        where = f"identity {number}"
        if not isinstance(identity, dict) or set(identity) != {"name", "secret", "actions"}:
            raise IdentityError(f"{where}: needs exactly the fields name, secret, actions")
        name, secret, actions = identity["name"], identity["secret"], identity["actions"]
        if not isinstance(name, str) or not NAME.match(name) or name in names:
            raise IdentityError(f"{where}: name {name!r} is not a new lowercase DNS label")
        if not isinstance(secret, str) or not NAME.match(secret) or secret in secrets:
            raise IdentityError(f"{where} ({name}): secret {secret!r} is not a new Secret name (one per identity)")
        if not isinstance(actions, list) or not actions:
            raise IdentityError(f"{where} ({name}): needs a non-empty list of actions")
        for action in actions:
            match = ACTION.match(action) if isinstance(action, str) else None
            if match is None:
                raise IdentityError(f"{where} ({name}): action {action!r} is not VERB, VERB:bucket or "
                                    f"VERB:bucket/prefix/* with VERB one of {', '.join(ACTIONS)}")
            if match["bucket"] is None:
                if action != "Admin":
                    raise IdentityError(f"{where} ({name}): {action!r} reaches every bucket: limit it to one")
                admins.append(name)
        names.add(name)
        secrets.add(secret)
    if len(admins) != 1:
        raise IdentityError(f"exactly one identity may hold the unlimited Admin action, found {admins or 'none'}")
    return identities


def read_key(keys: Path, name: str, file: str) -> str:
    """One key of identity ``name`` from its mounted Secret, stripped; refused if missing or malformed."""
    path = keys / name / file
    if not path.is_file():
        raise IdentityError(f"identity {name}: {path} is missing (is its Secret mounted with key {file}?)")
    value = path.read_text().strip()
    if file == "AWS_ACCESS_KEY_ID" and not ACCESS_KEY.match(value):
        raise IdentityError(f"identity {name}: {file} must be 16-128 letters and digits")
    if file == "AWS_SECRET_ACCESS_KEY" and (len(value) < MIN_SECRET_KEY or any(c.isspace() for c in value)):
        raise IdentityError(f"identity {name}: {file} must be at least {MIN_SECRET_KEY} characters, no spaces")
    return value


def seaweed_config(policy: dict, keys: Path) -> dict:
    """SeaweedFS's identity configuration (``-s3.config``) for ``policy``, with each identity's keys read
    from ``keys/<name>/``; two identities sharing an access or secret key are refused.
    """
    identities, seen = check_policy(policy), {}
    config = []
    for identity in identities:
        access, secret = (read_key(keys, identity["name"], file) for file in KEY_FILES)
        for value in (access, secret):
            if value in seen:
                raise IdentityError(f"identities {seen[value]} and {identity['name']} share a key: "
                                    "every workload needs its own")
            seen[value] = identity["name"]
        config.append({"name": identity["name"], "credentials": [{"accessKey": access, "secretKey": secret}],
                       "actions": list(identity["actions"])})
    return {"identities": config}


def write_seaweed_config(policy_file: Path, keys: Path, output: Path) -> Path:
    """Write :func:`seaweed_config` of the policy in ``policy_file`` to ``output``, readable by its owner only."""
    try:
        policy = json.loads(Path(policy_file).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise IdentityError(f"{policy_file}: {error}") from None
    config = seaweed_config(policy, Path(keys))
    output = Path(output)
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        json.dump(config, stream)
    return output
