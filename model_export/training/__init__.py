"""effnet-train: your own classifier from a folder of photos (see cli.py)."""
