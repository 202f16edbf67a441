from components.sample.component import sample

__all__ = ["sample"]
