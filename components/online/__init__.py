from components.online.component import online

__all__ = ["online"]
