"""What a finished effnet-train run gives back: its report, its files, and more of them."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..calibration import torch_threads
from ..export import Exporter
from . import data as data_mod
from .checkpoint import CHECKPOINT
from .judge import calibrate_on_training, evaluate_file
from .options import CALIB_MAX
from .report import files_rounding, text
from .run_folder import TrainError


@dataclass
class TrainResult:
    folder: Path
    report: dict
    threads: int | None = None
    files: dict = field(init=False)

    def __post_init__(self):
        self.files = {k: Path(v) for k, v in self.report["files"].items()}

    @classmethod
    def load(cls, folder, threads: int | None = None) -> "TrainResult":
        """The result of a finished run in `folder` (its report.json)."""
        folder = Path(folder)
        try:
            report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TrainError(f"{folder}: no finished effnet-train run there ({e})") from None
        return cls(folder, report, threads)

    @property
    def classes(self) -> list[str]:
        return self.report["classes"]

    def summary(self) -> str:
        return text(self.report)

    def evaluate(self, data, file: str = "tflite") -> dict:
        """One exported file through the runtime on labelled photos (a folder of class folders,
        a CSV, or [(path, class)]): top-1, per class, confusion, thresholds, the mistakes."""
        photos = data_mod.load(Path(data)) if isinstance(data, (str, Path)) else data_mod.from_pairs(data)
        photos = data_mod.same_classes(photos, self.classes, data if isinstance(data, (str, Path)) else None)
        return evaluate_file(self.files[file], photos, self.files[file].name, self.threads)

    def export(self, path, precision: str = "int8", fmt: str | None = None, io: str | None = None,
               softmax: bool = False, calibration=None, rounding: str | None = None) -> Path:
        """Another file of the trained model (calibrated on `calibration`, a folder, or on the
        training photos' centre crops, chosen as the run chose them; int8 weights by `rounding`,
        learned or nearest: by default as the run's own files)."""
        rounding = rounding or files_rounding(self.report)
        path = Path(path)
        fmt = fmt or ("onnx" if path.suffix == ".onnx" else "tflite")
        exporter = Exporter(self.report["variant"], weights=self.folder / CHECKPOINT, labels=self.classes)
        # the run's own thread count: calibration's float sums depend on it (the same file again)
        threads = self.report.get("torch_threads")
        with torch_threads(threads if isinstance(threads, int) and threads > 0 else None):
            self._calibrate(exporter, precision, calibration, rounding)
        exporter.export(path, precision, fmt, io, softmax=softmax)
        return path

    def _calibrate(self, exporter, precision, calibration, rounding) -> None:
        if precision == "int8":
            if calibration is not None:
                exporter.calibrate(calibration, CALIB_MAX, rounding=rounding)
            else:
                with open(self.folder / "split.csv", newline="", encoding="utf-8") as f:
                    rows = [(r["path"], r["label"]) for r in csv.DictReader(f) if r["set"] == "train"]
                train = data_mod.same_classes(data_mod.from_pairs(rows), self.classes, self.folder / "split.csv")
                calibrate_on_training(exporter, train, self.report["config"]["seed"], rounding)   # as the run did
