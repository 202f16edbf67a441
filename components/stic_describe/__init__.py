from components.stic_describe.component import stic_describe

__all__ = ["stic_describe"]
