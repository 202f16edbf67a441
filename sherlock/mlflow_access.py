"""Who may do what in the platform's MLflow: ``mlflow server --app-name basic-auth``.

The server runs MLflow's own authentication app with ``default_permission = NO_PERMISSIONS``
(``manifests/base/mlflow.yaml``): anonymous requests get 401, and a user sees and changes only what a
grant names. :func:`grant_access` (``sherlock mlflow-access``, run as MLflow's admin by the
``sherlock-mlflow-access`` Job) makes the platform's two users, idempotently:

* the pipeline user, ``MANAGE`` on the experiment and the registered models: the steps log runs,
  register versions and move aliases as this user, never as the admin;
* the reader user, ``READ`` on the registered models (``sherlock serve --model models:/…``, dashboards).

Passwords come from the environment (Secrets), never from flags: a user that exists is kept
non-admin and gets the password of the environment, so re-running the Job after rotating a Secret
rotates the password. Who may move ``champion`` is therefore who holds the pipeline user's
password; :func:`sherlock.tracking.gate_champion` further refuses versions that were not registered
by the pipeline run asking, and signs what it promotes with a key no other step holds
(:mod:`sherlock.gate`), which deploy and serve check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sherlock.config import help_field

PIPELINE_PASSWORD_ENV = "SHERLOCK_MLFLOW_PIPELINE_PASSWORD"
READER_PASSWORD_ENV = "SHERLOCK_MLFLOW_READER_PASSWORD"
MIN_PASSWORD_LENGTH = 12


class AccessError(ValueError):
    """The access set-up cannot run as asked (no server, no admin, weak or missing password)."""


@dataclass
class AccessConfig:
    """The experiment and registered models the pipeline writes, and the names of its two users."""

    experiment: str = help_field("sherlock", "MLflow experiment of the pipeline runs")
    models: str = help_field("sherlock,sherlock-scl,sherlock-stic",
                             "registered models the pipelines register (comma-separated)")
    pipeline_user: str = help_field("sherlock-pipeline",
                                    f"user of the pipeline's steps (password: ${PIPELINE_PASSWORD_ENV})")
    reader_user: str = help_field("sherlock-reader",
                                  f"read-only user of the registry (password: ${READER_PASSWORD_ENV})")


def _password(env: str) -> str:
    password = os.environ.get(env, "")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccessError(f"${env} must hold the user's password (at least {MIN_PASSWORD_LENGTH} characters)")
    return password


def _ensure_user(auth, username: str, password: str) -> str:
    """Create ``username`` or reset its password; never an admin. Returns what was done."""
    from mlflow.exceptions import RestException

    try:
        user = auth.get_user(username)
    except RestException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        auth.create_user(username, password)
        return "created"
    auth.update_user_password(username, password)
    if user.is_admin:
        auth.update_user_admin(username, False)
    return "password set"


def _grant(auth, username: str, kind: str, resource: str, permission: str) -> None:
    """Grant exactly ``permission`` (an earlier grant on the resource is replaced)."""
    from mlflow.exceptions import RestException

    try:
        auth.grant_user_permission(username, kind, resource, permission)
    except RestException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(username, kind, resource)
        auth.grant_user_permission(username, kind, resource, permission)


def grant_access(config: AccessConfig) -> dict:
    """Create the experiment, the registered models and the two users with their grants (as the admin
    named by ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``). Returns what was done, without passwords.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not tracking_uri.startswith(("http://", "https://")):
        raise AccessError(f"MLFLOW_TRACKING_URI must be the URL of an `mlflow server --app-name basic-auth`, "
                          f"got {tracking_uri!r}")
    if not os.environ.get("MLFLOW_TRACKING_USERNAME") or not os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        raise AccessError("MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD must name MLflow's admin")
    models = [name.strip() for name in config.models.split(",") if name.strip()]
    passwords = {config.pipeline_user: _password(PIPELINE_PASSWORD_ENV),
                 config.reader_user: _password(READER_PASSWORD_ENV)}
    if config.pipeline_user == config.reader_user:
        raise AccessError("the pipeline and reader users must differ")

    auth, client = get_app_client("basic-auth", tracking_uri=tracking_uri), mlflow.MlflowClient(tracking_uri)
    users = {name: _ensure_user(auth, name, password) for name, password in passwords.items()}
    experiment = client.get_experiment_by_name(config.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.experiment)
    for model in models:
        try:
            client.create_registered_model(model)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    grants = [(config.pipeline_user, "experiment", experiment_id, "MANAGE"),
              *((config.pipeline_user, "registered_model", model, "MANAGE") for model in models),
              *((config.reader_user, "registered_model", model, "READ") for model in models)]
    for grant in grants:
        _grant(auth, *grant)
    return {"experiment_id": experiment_id, "users": users,
            "grants": [f"{user}: {permission} on {kind} {resource}" for user, kind, resource, permission in grants]}
