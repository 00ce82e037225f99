"""One pretrained detector for both safety checks: NudeNet's YOLOv8n ``320n.onnx``.

The model ships inside the ``nudenet`` wheel on PyPI (AGPL-3.0 by the wheel's LICENSE file),
so nothing is fetched at run time. It finds 18 classes of body parts, exposed or covered,
and two classes of faces (``FACE_FEMALE``, ``FACE_MALE``): one pass gives an image its NSFW
score (the highest confidence of an exposed-part class anywhere in it) and its face boxes.

The session is ours rather than ``nudenet.NudeDetector``: that class runs one image at a
time through a Python loop over its 2,100 anchors and ignores the execution providers,
where a pool needs batches on the GPU when there is one. Inputs are prepared as the model
was trained: the image padded to a square at the bottom and right, resized (bilinear) to
the input side, RGB in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import cv2
import numpy as np
import onnxruntime

from manifests.config import ConfigError

LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED",
    "BELLY_COVERED", "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE",
    "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)  # fmt: skip
FACE_LABELS = ("FACE_FEMALE", "FACE_MALE")


@dataclass
class DetectorConfig:
    input_side: int = 320  # the model's training size; it accepts any multiple of 32
    nsfw_labels: list[str] = field(default_factory=lambda: [
        "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
        "BUTTOCKS_EXPOSED", "ANUS_EXPOSED"])  # fmt: skip
    face_threshold: float = 0.3  # a face box's least confidence
    nms_iou: float = 0.45
    threads: int = 0  # CPU threads of the session (0: onnxruntime's default, every core)
    device: str = "auto"  # auto (the GPU where onnxruntime has CUDA), cpu or cuda

    def validate(self) -> None:
        unknown = sorted(set(self.nsfw_labels) - set(LABELS))
        if unknown:
            raise ConfigError(f"safety.detector.nsfw_labels: {unknown} are not classes of the "
                              f"model; expected some of {list(LABELS)}")  # fmt: skip
        if self.input_side % 32 or self.input_side < 32:
            raise ConfigError(f"safety.detector.input_side: {self.input_side} is not a "
                              "positive multiple of 32 (the model's stride)")  # fmt: skip
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"safety.detector.device: {self.device!r}; expected auto, cpu "
                              "or cuda")  # fmt: skip


@dataclass(frozen=True)
class Detections:
    """What the detector saw in one image (boxes in its pixels: x, y, width, height)."""

    nsfw_score: float
    nsfw_label: str
    face_boxes: list[tuple[int, int, int, int]]
    face_scores: list[float]


def _providers(device: str) -> list[str]:
    available = onnxruntime.get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not cuda:
        raise ConfigError("safety.detector.device: cuda, but this onnxruntime has no CUDA "
                          f"provider (it has {available}); install onnxruntime-gpu")  # fmt: skip
    if not cuda or device == "cpu":
        return ["CPUExecutionProvider"]
    if hasattr(onnxruntime, "preload_dlls"):  # onnxruntime-gpu 1.21+: CUDA and cuDNN from
        onnxruntime.preload_dlls()  # the nvidia-*-cu12 wheels that torch installed
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


class SafetyDetector:
    """Batched NSFW scores and face boxes for RGB images of any sizes."""

    def __init__(self, config: DetectorConfig) -> None:
        config.validate()
        self.config = config
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = config.threads
        model = resources.files("nudenet") / "320n.onnx"
        with resources.as_file(model) as path:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=_providers(config.device)
            )
        self.input_name = self.session.get_inputs()[0].name
        self._nsfw = [LABELS.index(n) for n in config.nsfw_labels]
        self._faces = [LABELS.index(n) for n in FACE_LABELS]

    @property
    def device(self) -> str:
        return "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        """``images``: H x W x 3 uint8 RGB arrays; one Detections per image, in order."""
        if not images:
            return []
        batch = np.stack([self._input(image) for image in images])
        (output,) = self.session.run(None, {self.input_name: batch})
        return [self._decode(o.T, max(i.shape[:2]) / self.config.input_side, i.shape[:2])
                for o, i in zip(output, images, strict=True)]  # fmt: skip

    def _input(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        side = max(h, w)
        square = cv2.copyMakeBorder(image, 0, side - h, 0, side - w, cv2.BORDER_CONSTANT)
        s = self.config.input_side
        resized = cv2.resize(square, (s, s), interpolation=cv2.INTER_LINEAR)
        return resized.transpose(2, 0, 1).astype(np.float32) / 255.0

    def _decode(self, anchors: np.ndarray, scale: float, shape: tuple[int, int]) -> Detections:
        """``anchors``: (N, 4 + classes) rows of centre x, centre y, width, height (input
        pixels) and class scores."""
        scores = anchors[:, 4:]
        nsfw = scores[:, self._nsfw]
        best = np.unravel_index(int(nsfw.argmax()), nsfw.shape) if nsfw.size else (0, 0)
        nsfw_score = float(nsfw[best]) if nsfw.size else 0.0
        nsfw_label = self.config.nsfw_labels[best[1]] if nsfw.size else ""
        face = scores[:, self._faces].max(axis=1)
        keep = face >= self.config.face_threshold
        boxes, confidences = self._boxes(anchors[keep, :4] * scale, shape), face[keep]
        chosen = cv2.dnn.NMSBoxes(boxes.tolist(), confidences.tolist(),
                                  self.config.face_threshold, self.config.nms_iou)  # fmt: skip
        chosen = [int(i) for i in np.asarray(chosen).reshape(-1)]
        return Detections(nsfw_score, nsfw_label,
                          [tuple(int(v) for v in boxes[i]) for i in chosen],
                          [round(float(confidences[i]), 4) for i in chosen])  # fmt: skip

    @staticmethod
    def _boxes(cxcywh: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Centre boxes -> x, y, width, height clipped to the image."""
        h, w = shape
        x0 = np.clip(cxcywh[:, 0] - cxcywh[:, 2] / 2, 0, w)
        y0 = np.clip(cxcywh[:, 1] - cxcywh[:, 3] / 2, 0, h)
        x1 = np.clip(cxcywh[:, 0] + cxcywh[:, 2] / 2, 0, w)
        y1 = np.clip(cxcywh[:, 1] + cxcywh[:, 3] / 2, 0, h)
        return np.round(np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)).astype(np.int64)
