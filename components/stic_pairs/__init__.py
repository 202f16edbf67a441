from components.stic_pairs.component import stic_pairs

__all__ = ["stic_pairs"]
