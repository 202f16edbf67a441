from components.build_preferences.component import build_preferences

__all__ = ["build_preferences"]
