"""PyTorch eager fp32 as a user would run it: the unfolded model with torchvision-style
float preprocessing (exact decode and resize, crop, normalise, NCHW tensor). Needs torch;
import it only when a --torch model is asked for."""
from __future__ import annotations

import torch

from effnet_lite import ModelError
from effnet_lite.model_export.weights import WeightsError, load_model
from effnet_lite.preprocess import PreprocessConfig, normalize, preprocess


class TorchReference:
    def __init__(self, variant: str, random_init: bool = False):
        try:
            self.model = load_model(variant, random_init=random_init)
        except WeightsError as e:
            raise ModelError(f"--torch {variant}: {e}") from None
        self.variant = self.model.variant
        self.config = PreprocessConfig.for_variant(self.variant, self.model.input_size)

    def input(self, image) -> torch.Tensor:
        """The (1, 3, H, W) float input for a path, bytes, PIL image or uint8 array."""
        x = normalize(preprocess(image, self.config, exact=True), self.variant.mean, self.variant.std)
        return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(self.model(x), 1)
