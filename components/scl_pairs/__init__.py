from components.scl_pairs.component import scl_pairs

__all__ = ["scl_pairs"]
