"""The ``deploy`` component (:mod:`components`)."""

from kfp import dsl

from components.images import CPU


@dsl.component(**CPU)
def deploy(model_name: str, settings: dict, output_root: str, pipeline_run_id: str, registry_root: str) -> str:
    """Serve ``models:/<model_name>@champion`` as a KServe InferenceService (without a cluster: its manifest).

    Args:
        model_name: Registered model whose ``@champion`` is served.
        settings: Fields of ``sherlock.serving.deploy.DeployConfig`` (namespace, resources, …).
        output_root: Where steps write: this step writes ``<output_root>/<pipeline_run_id>/<step>``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
        registry_root: Where registered checkpoints are copied: the only prefix deployed from.
    """
    import json

    from components.steps import deploy_step

    return json.dumps(deploy_step(model_name, settings, output_root, pipeline_run_id, registry_root))
