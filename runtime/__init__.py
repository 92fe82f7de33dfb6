"""Light EfficientNet-Lite inference: numpy + Pillow + one backend (LiteRT, tflite-runtime, onnxruntime)."""
