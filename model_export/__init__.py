"""Build, fold, quantize and export EfficientNet-Lite models (needs the `export` extra)."""
