from components.register_and_gate.component import register_and_gate

__all__ = ["register_and_gate"]
