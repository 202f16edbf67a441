from components.sample_rejected.component import sample_rejected

__all__ = ["sample_rejected"]
