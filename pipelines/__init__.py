"""The Kubeflow pipelines of the three recipes: ``python -m pipelines.<recipe>`` compiles one."""
