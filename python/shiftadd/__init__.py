"""shiftadd: inference engine for (ShiftAdd) Vision Transformers, from Python.

    import shiftadd, numpy as np
    model = shiftadd.Model("models/fashion_vit")        # or shiftadd.Model() for the bundled one
    session = model.session(threads=2)                   # one per thread; device="cuda", mode="fast"
    logits = session.run(np.zeros((1, *model.input_shape), np.float32))
    session.classify(["shirt.png", pil_image], top_k=3)

Every engine failure raises shiftadd.Error (a RuntimeError) with the engine's message, which
names the file, tensor or option and what was expected.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, NamedTuple, Optional, Sequence, Union

import numpy as np

from . import _core
from ._core import Error, default_model_path, set_verbosity
from ._export import export

# eval is left out of __all__ so that `from shiftadd import *` does not hide the builtin.
__all__ = ["Error", "Model", "Session", "Prediction", "convert", "export", "version",
           "default_model_path", "set_verbosity"]
__version__ = _core.version()


def version() -> str:
    return _core.version()


class Prediction(NamedTuple):
    index: int
    label: str
    probability: float


def _as_input(x: Any, who: str) -> np.ndarray:
    """float32, C-ordered view of x: no copy when it already is one."""
    try:
        return np.ascontiguousarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise Error(f"{who}: expected a float32 array (B, C, H, W), got {type(x).__name__}: {e}") from None


class Model:
    """A model loaded once (immutable, shared by every session and thread).

    path: a .safetensors or .onnx file, or a model directory (timm / Hugging Face layout, or one
    written by shiftadd.export); None loads the bundled Fashion-MNIST ViT.
    """

    def __init__(self, path: Union[str, os.PathLike, None] = None):
        self._m = _core.Model(os.fspath(path) if path is not None else default_model_path())

    @property
    def path(self) -> str:
        return self._m.path

    @property
    def input_shape(self) -> tuple:
        """(C, H, W) of one preprocessed image."""
        return tuple(self._m.input_shape)

    @property
    def num_classes(self) -> int:
        return self._m.num_classes

    @property
    def labels(self) -> list:
        return list(self._m.labels)

    def __repr__(self) -> str:
        return f"shiftadd.Model({self.path!r})"

    def session(self, threads: int = 0, device: str = "cpu", mode: str = "exact") -> "Session":
        """A new Session. threads <= 0: every core; device "cpu" or "cuda"; mode "exact" or "fast"
        (shift-layer arithmetic of ShiftAddViT models)."""
        return Session(self, self._m.session(threads=threads, device=device, mode=mode))

    def preprocess(self, image: Any) -> np.ndarray:
        """The model's preprocessing (resize, crop, normalise) of one image: a file path, a PIL
        image, or uint8 pixels (H, W) / (H, W, 1) / (H, W, 3). Returns float32 (C, H, W)."""
        if isinstance(image, (str, os.PathLike)):
            return self._m.preprocess_file(os.fspath(image))
        if hasattr(image, "mode") and hasattr(image, "convert"):  # a PIL image (PIL is optional)
            image = np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))
        a = np.asarray(image)
        if a.dtype != np.uint8:
            raise Error(f"preprocess: expected uint8 pixels (H, W) or (H, W, C), got dtype {a.dtype}; "
                        "already preprocessed float arrays go straight to Session.run")
        if a.ndim == 3 and a.shape[2] == 4:  # RGBA: drop alpha, as PIL's convert("RGB")
            a = a[:, :, :3]
        return self._m.preprocess_pixels(np.ascontiguousarray(a))

    def inspect(self) -> dict:
        """What the engine sees (as `shiftadd inspect --json`): format, architecture, dims,
        heads, labels and the per-layer table."""
        return json.loads(self._m.info_json())

    def profile(self, batch: int = 1, runs: int = 10, warmup: int = 1, input: Optional[np.ndarray] = None,
                threads: int = 0, device: str = "cpu", mode: str = "exact", measure_energy: bool = True) -> dict:
        """Per-layer time, operation counts and modelled / measured energy (as `shiftadd profile
        --format json`; docs/profiling.md). input: preprocessed (B, C, H, W) pixels (B is then
        the batch); default a fixed random input."""
        x = None if input is None else _as_input(input, "profile")
        return json.loads(self._m.profile(batch=batch, runs=runs, warmup=warmup, input=x,
                                          measure_energy=measure_energy, threads=threads, device=device,
                                          mode=mode))


class Session:
    """Execution state for one thread (thread pool, activation memory planned per batch size).
    Runs release the GIL, so sessions in several Python threads run in parallel; one session
    used from several threads runs one call at a time."""

    def __init__(self, model: Model, core_session: Any):
        self.model = model
        self._s = core_session

    def run(self, x: Any) -> np.ndarray:
        """Logits float32 (B, classes) of preprocessed pixels float32 (B, C, H, W). A float32
        C-ordered array is read in place; anything else is converted first."""
        return self._s.run(_as_input(x, "Session.run"))

    def prepare(self, batch: int) -> None:
        """Plans memory for a batch size ahead of the first run (optional)."""
        self._s.prepare(batch)

    def classify(self, images: Any, top_k: int = 5):
        """Top-k classes of one image (path, PIL image or uint8 array) or a list of them, in one
        batched run. One image: a list of Prediction; a list: one such list per image."""
        if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1:
            raise Error(f"classify: top_k must be an integer >= 1, got {top_k!r}")
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if not batch:
            raise Error("classify: no images given")
        x = np.stack([self.model.preprocess(im) for im in batch])
        logits = self.run(x)
        labels = self.model.labels
        out = [[Prediction(*p) for p in _core.top_k(row, labels, int(top_k))] for row in logits]
        return out[0] if single else out

    def expert_tokens(self) -> list:
        """(layer, tokens to the dense expert, tokens to the shift expert) of every MoE layer in
        the last run."""
        return list(self._s.expert_tokens())


def convert(input: Union[str, os.PathLike], output: Union[str, os.PathLike], calib: Union[str, os.PathLike], *,
            mlp: str = "shift", attn_proj: str = "dense", attn: str = "dense",
            ksh_blocks: Sequence[int] = (), bits: int = 16, anchors: int = 25, calib_split: str = "train",
            calib_count: int = 256, shift_ratio: float = 0.5, latency_aware: bool = False,
            shift_scale: bool = False, threads: int = 0, seed: int = 0, force: bool = False) -> dict:
    """Dense ViT / DeiT / PVTv2 -> ShiftAddViT model file, as `shiftadd convert` (docs/converter.md).
    Returns the report (per-layer errors, end-to-end logit error, top-1 agreement, warnings)."""
    return json.loads(_core.convert(os.fspath(input), os.fspath(output), os.fspath(calib), mlp, attn_proj, attn,
                                    list(ksh_blocks), bits, anchors, calib_split, calib_count, shift_ratio,
                                    latency_aware, shift_scale, threads, seed, force))


def eval(model: Union[Model, str, os.PathLike], data: Union[str, os.PathLike], *, split: str = "test",
         limit: int = 0, labels: Union[str, os.PathLike, None] = None, batch: int = 64, threads: int = 0,
         device: str = "cpu", mode: str = "exact") -> dict:  # noqa: A001 (the CLI's name)
    """Top-1 / top-5 accuracy over a labeled dataset (IDX files, class folders or a .npy with
    labels.npy), as `shiftadd eval --json`."""
    m = model if isinstance(model, Model) else Model(model)
    r = json.loads(_core.evaluate(m._m, os.fspath(data), split, limit, os.fspath(labels) if labels else "", batch,
                                  threads, device, mode))
    r.update(threads=threads, mode=mode, device=device)
    return r
