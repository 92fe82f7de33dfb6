"""The real MediaPipe Tasks ImageClassifier, imported lazily (the `test` extra installs it)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def rgb(path) -> np.ndarray:
    """A photo as HxWx3 uint8, upright. MediaPipe's own loader keeps grayscale JPEGs
    single-channel, which its ImageClassifier refuses, so tests hand it RGB."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


class MediaPipeClassifier:
    def __init__(self, model_path, max_results: int = -1):
        from mediapipe.tasks import python as tasks
        from mediapipe.tasks.python import vision
        self.vision = vision
        options = vision.ImageClassifierOptions(
            base_options=tasks.BaseOptions(model_asset_path=str(model_path)), max_results=max_results)
        self.task = vision.ImageClassifier.create_from_options(options)

    def classify(self, image: np.ndarray, crop_pct: float | None = None) -> list:
        """Categories (index, category_name, score), best first. With `crop_pct`, MediaPipe
        is given the centre square our preprocessing crops, as a region of interest;
        without it, MediaPipe resizes the whole frame."""
        import mediapipe as mp
        from mediapipe.tasks.python.components.containers.rect import RectF
        frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        if crop_pct is None:
            result = self.task.classify(frame)
        else:
            h, w = image.shape[:2]
            fx, fy = min(h, w) * crop_pct / w, min(h, w) * crop_pct / h
            roi = RectF(left=(1 - fx) / 2, top=(1 - fy) / 2, right=(1 + fx) / 2, bottom=(1 + fy) / 2)
            result = self.task.classify(frame, self.vision.ImageProcessingOptions(region_of_interest=roi))
        return list(result.classifications[0].categories)

    def close(self):
        self.task.close()
