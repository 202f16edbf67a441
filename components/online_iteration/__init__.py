from components.online_iteration.component import online_iteration

__all__ = ["online_iteration"]
