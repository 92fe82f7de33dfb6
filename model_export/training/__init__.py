"""effnet-train: your own classifier from a folder of photos (the command: cli.py; the Python
API: Trainer, TrainOptions, TrainResult in api.py)."""
from .api import Trainer, TrainOptions, TrainResult

__all__ = ["Trainer", "TrainOptions", "TrainResult"]
