"""effnet_lite: light EfficientNet-Lite inference, numpy + Pillow + one backend (LiteRT,
tflite-runtime, onnxruntime). Nothing heavy is imported until a model is opened.

The package is the repository's runtime/ folder; effnet_lite.model_export (the exporter,
needs the `export` extra), effnet_lite.apps (the commands) and effnet_lite.benchmarks are its
subpackages, none of which this one imports."""
from .classifier import Category, ClassificationResult, Classifier, ClassifierOptions
from .errors import BackendUnavailableError, ImageError, ModelError
from .preprocess import PreprocessConfig, load_image, preprocess

__version__ = "0.1.0"
__all__ = ["Category", "ClassificationResult", "Classifier", "ClassifierOptions",
           "BackendUnavailableError", "ImageError", "ModelError", "PreprocessConfig",
           "load_image", "preprocess", "__version__"]
