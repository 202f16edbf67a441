from components.prepare_inputs.component import prepare_inputs

__all__ = ["prepare_inputs"]
