"""shiftadd.export: a timm or Hugging Face model object (or a state dict) -> an engine-ready
directory (model.safetensors + config.json [+ preprocessor_config.json]) that states everything
the engine would otherwise infer or default: heads, image size, LayerNorm eps, labels and the
preprocessing pipeline. The directory is checked by loading it (and, for a torch module, by
comparing logits with PyTorch) before it is moved into place.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from . import _core
from ._core import Error


def _numpy_f32(t: Any) -> Optional[np.ndarray]:
    """float32 numpy copy of a floating tensor or array; None for integer buffers (position ids)."""
    if hasattr(t, "detach"):  # torch.Tensor
        if not t.is_floating_point():
            return None
        return t.detach().to("cpu").float().contiguous().numpy()
    a = np.asarray(t)
    if not np.issubdtype(a.dtype, np.floating):
        return None
    return np.ascontiguousarray(a, dtype=np.float32)


def _pair(v: Any) -> int:
    return int(v[0] if isinstance(v, (tuple, list)) else v)


def _timm_preprocess(module: Any, in_chans: int, img_size: int) -> dict:
    """timm's pretrained_cfg, with input_size set to what this module really takes."""
    cfg = dict(getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None) or {})
    mean = list(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = list(cfg.get("std", (0.229, 0.224, 0.225)))
    if len(mean) != in_chans:  # e.g. a 1-channel model made from a 3-channel recipe
        mean, std = [float(np.mean(mean))] * in_chans, [float(np.mean(std))] * in_chans
    return {
        "input_size": [in_chans, img_size, img_size],
        "crop_pct": float(cfg.get("crop_pct", 0.875)),
        "interpolation": str(cfg.get("interpolation", "bicubic")),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }


def _timm_config(module: Any, state: Mapping[str, Any]) -> dict:
    """config.json for a timm VisionTransformer / DeiT or PyramidVisionTransformerV2."""
    arch = (getattr(module, "pretrained_cfg", None) or {}).get("architecture") or type(module).__name__
    if "blocks.0.attn.qkv.weight" in state:  # ViT / DeiT
        if getattr(module, "global_pool", "token") not in ("token", ""):
            raise Error(f"export: timm model {arch} pools with global_pool={module.global_pool!r}; the engine "
                        "runs class-token ViTs (global_pool='token')")
        img_size = _pair(module.patch_embed.img_size)
        in_chans = int(module.patch_embed.proj.in_channels)
        cfg = {"architecture": arch, "num_heads": int(module.blocks[0].attn.num_heads), "img_size": img_size,
               "in_chans": in_chans, "num_classes": int(module.num_classes),
               "layer_norm_eps": float(module.norm.eps)}
    elif "stages.0.blocks.0.attn.q.weight" in state:  # PVTv2
        in_chans = int(module.patch_embed.proj.in_channels)
        # PVTv2 takes any size: the one it was made for is in its pretrained_cfg.
        img_size = int(((getattr(module, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224))[-1])
        cfg = {"architecture": arch, "num_heads": [int(s.blocks[0].attn.num_heads) for s in module.stages],
               "img_size": img_size, "in_chans": in_chans, "num_classes": int(module.num_classes),
               "layer_norm_eps": float(module.stages[0].norm.eps) if hasattr(module.stages[0].norm, "eps") else 1e-6}
    else:
        raise Error(f"export: timm model {arch} ({type(module).__name__}) is neither a ViT/DeiT "
                    "('blocks.0.attn.qkv.weight') nor a PVTv2 ('stages.0.blocks.0.attn.q.weight')")
    pre = _timm_preprocess(module, in_chans, img_size)
    cfg["pretrained_cfg"] = pre
    # The engine's own statement of the pipeline (docs/format.md), read for every family.
    cfg["shiftadd_preprocess"] = {k: pre[k] for k in ("crop_pct", "interpolation", "mean", "std")}
    return cfg


def _hf_files(module: Any, preprocessor: Any) -> tuple[dict, dict]:
    """config.json and preprocessor_config.json of a Hugging Face model. Without a processor,
    the one ViTImageProcessor() would use (resize to the model's size, bilinear, mean/std 0.5)."""
    config = module.config.to_dict()
    if preprocessor is None:
        size = int(module.config.image_size)
        pre = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "do_rescale": True,
               "do_normalize": True, "size": {"height": size, "width": size}, "resample": 2,
               "image_mean": [0.5] * int(module.config.num_channels),
               "image_std": [0.5] * int(module.config.num_channels)}
    else:
        pre = preprocessor.to_dict() if hasattr(preprocessor, "to_dict") else dict(preprocessor)
    return config, pre


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
        f.write("\n")


def _compare_with_torch(module: Any, hf: bool, model_dir: str, tolerance: float) -> float:
    import torch

    from . import Model

    engine = Model(model_dir)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, *engine.input_shape), generator=gen)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = module(pixel_values=x) if hf else module(x)
    module.train(was_training)
    want = (out.logits if hasattr(out, "logits") else out).float().numpy()
    got = engine.session(threads=1).run(x.numpy())
    err = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))
    if not err <= tolerance:
        raise Error(f"export: the engine's logits differ from PyTorch's by {err:.3g} (max |diff| / max |logit|, "
                    f"tolerance {tolerance:g}) on a random input: this {type(module).__name__} uses something the "
                    "engine does not reproduce; nothing was written")
    return err


def export(model: Any, out_dir: str | os.PathLike, config: Optional[Mapping[str, Any]] = None, *,
           labels: Optional[Sequence[str]] = None, preprocessor: Any = None, overwrite: bool = False,
           verify: bool = True, tolerance: float = 1e-4):
    """Writes an engine-ready model directory and returns it loaded as a shiftadd.Model.

    model: a timm VisionTransformer / DeiT / PyramidVisionTransformerV2, a Hugging Face
      ViTForImageClassification / DeiTForImageClassification[WithTeacher], or a state dict
      (name -> tensor or array, timm or Hugging Face names) together with `config`.
    config: extra config.json entries (for a state dict: at least num_heads / num_attention_heads
      and img_size / image_size where the tensors do not tell); they override what is derived.
    labels: class names (timm: written as label_names; Hugging Face: id2label).
    preprocessor: Hugging Face image processor (or its dict); default: ViTImageProcessor's.
    overwrite: replace an existing out_dir; otherwise an existing out_dir is an Error.
    verify: for a torch module, compare the engine's logits with the module's on a random batch
      and refuse (writing nothing) when they differ by more than `tolerance` (relative).
    """
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise Error(f"export: {out_dir} already exists; pass overwrite=True to replace it")
    module = model if hasattr(model, "state_dict") and callable(model.state_dict) else None
    state = module.state_dict() if module is not None else model
    if not isinstance(state, Mapping):
        raise Error(f"export: expected a torch module or a state dict, got {type(model).__name__}")
    hf = module is not None and hasattr(module, "config") and hasattr(module.config, "to_dict")

    pre_json = None
    if hf:
        cfg, pre_json = _hf_files(module, preprocessor)
        if labels is not None:
            cfg["id2label"] = {str(i): str(n) for i, n in enumerate(labels)}
            cfg["label2id"] = {str(n): i for i, n in enumerate(labels)}
    elif module is not None:
        cfg = _timm_config(module, state)
    else:
        cfg = {}
    if labels is not None and not hf:
        cfg["label_names"] = [str(n) for n in labels]
    cfg.update(config or {})
    size = cfg.get("img_size")
    if isinstance(cfg.get("pretrained_cfg"), dict) and isinstance(size, int):  # keep the two in step
        cfg["pretrained_cfg"]["input_size"] = [cfg["pretrained_cfg"]["input_size"][0], size, size]

    tensors = {}
    for name, t in state.items():
        a = _numpy_f32(t)
        if a is not None:
            tensors[name] = a
    if not tensors:
        raise Error("export: the model has no floating-point tensors")

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".shiftadd-export-", dir=parent)
    try:
        _core.save_safetensors(os.path.join(tmp, "model.safetensors"), tensors, {"format": "pt"}, False)
        _write_json(os.path.join(tmp, "config.json"), cfg)
        if pre_json is not None:
            _write_json(os.path.join(tmp, "preprocessor_config.json"), pre_json)
        if verify and module is not None:
            _compare_with_torch(module, hf, tmp, tolerance)
        else:
            from . import Model

            Model(tmp)  # loads: the engine accepts it
        # Into place: a directory rename is atomic; a replaced directory is removed only after.
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=".shiftadd-export-old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "d"))
        os.rename(tmp, out_dir)
        tmp = None
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    from . import Model

    return Model(out_dir)
