from components.train_preferences.component import train_preferences

__all__ = ["train_preferences"]
