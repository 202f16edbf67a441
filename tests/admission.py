"""The ValidatingAdmissionPolicies of ``manifests/cluster-policy``, evaluated by a real CEL implementation.

There is no API server on the test machines: this checks a policy's logic (variables first, in order,
then every validation, as the API server evaluates them), not its registration or its cost estimate.
"""

from __future__ import annotations

from pathlib import Path

import yaml

POLICIES = Path(__file__).resolve().parents[1] / "manifests" / "cluster-policy"


def policy(name: str) -> dict:
    """The ValidatingAdmissionPolicy ``name`` as committed."""
    for path in sorted(POLICIES.glob("*-policy.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document["kind"] == "ValidatingAdmissionPolicy" and document["metadata"]["name"] == name:
                return document
    raise KeyError(f"no ValidatingAdmissionPolicy {name} in {POLICIES}")


def admission(name: str, obj: dict) -> list[str]:
    """The messages of the validations of policy ``name`` that refuse ``obj`` (empty: admitted)."""
    import cel

    spec = policy(name)["spec"]
    context = {"object": obj, "variables": {}}
    for variable in spec["variables"]:
        context["variables"][variable["name"]] = cel.evaluate(variable["expression"], context)
    return [check["message"] for check in spec["validations"] if cel.evaluate(check["expression"], context) is not True]
