"""effnet-train: your own classifier from a folder of photos (the command: cli.py; the Python
API: Trainer in api.py, TrainOptions in options.py, TrainResult in result.py)."""
from .api import Trainer
from .options import TrainOptions
from .result import TrainResult

__all__ = ["Trainer", "TrainOptions", "TrainResult"]
