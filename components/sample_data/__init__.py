from components.sample_data.component import sample_data

__all__ = ["sample_data"]
