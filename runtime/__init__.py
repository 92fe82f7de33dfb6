"""Light EfficientNet-Lite inference: numpy + Pillow + one backend (LiteRT, tflite-runtime,
onnxruntime). Nothing heavy is imported until a model is opened."""
from .classifier import Category, ClassificationResult, Classifier, ClassifierOptions
from .errors import BackendUnavailableError, ImageError, ModelError
from .preprocess import PreprocessConfig, load_image, preprocess

__version__ = "0.1.0"
__all__ = ["Category", "ClassificationResult", "Classifier", "ClassifierOptions",
           "BackendUnavailableError", "ImageError", "ModelError", "PreprocessConfig",
           "load_image", "preprocess", "__version__"]
