"""Parity with PyTorch: the repository's golden fixtures (logits computed by PyTorch, timm and
Hugging Face; tests/fixtures/README.md), and, where torch / timm / transformers are importable,
models built here, exported with shiftadd.export and compared live."""
import json

import numpy as np
import pytest

from conftest import FIXTURES


def golden_cases():
    for set_name in ("goldens", "goldens_real"):
        for case in sorted((FIXTURES / set_name).glob("*/case.json")):
            c = json.loads(case.read_text())
            if "input" in c and "logits" in c:
                yield pytest.param(case.parent, c, id=f"{set_name}/{case.parent.name}")


def rel_error(got, want):
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))


@pytest.mark.parametrize("case_dir,case", list(golden_cases()))
def test_golden_matches_pytorch(shiftadd, case_dir, case):
    m = shiftadd.Model(case_dir / case["model"])
    x = np.load(case_dir / case["input"])
    want = np.load(case_dir / case["logits"])
    got = m.session(threads=2).run(x)
    assert got.shape == want.shape
    assert rel_error(got, want) <= 1e-4


torch = pytest.importorskip("torch", reason="PyTorch is not importable in this interpreter")


def torch_logits(module, x, hf=False):
    module.eval()
    with torch.no_grad():
        out = module(pixel_values=torch.from_numpy(x)) if hf else module(torch.from_numpy(x))
    return (out.logits if hasattr(out, "logits") else out).numpy()


def test_export_timm_vit(shiftadd, tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8,
                            depth=2, embed_dim=48, num_heads=3)
    labels = ["a", "b", "c", "d", "e"]
    m = shiftadd.export(net, tmp_path / "vit", labels=labels)
    info = m.inspect()
    assert (info["heads"], info["image_size"], info["patch_size"], info["labels"]) == (3, 32, 8, labels)
    cfg = json.loads((tmp_path / "vit" / "config.json").read_text())
    assert cfg["pretrained_cfg"]["input_size"] == [3, 32, 32] and cfg["num_heads"] == 3
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    assert rel_error(m.session(threads=2).run(x), torch_logits(net, x)) <= 1e-4
    # The written preprocessing is timm's (bicubic, crop 0.9, ImageNet mean/std).
    assert cfg["shiftadd_preprocess"]["interpolation"] == "bicubic" and cfg["shiftadd_preprocess"]["crop_pct"] == 0.9


def test_export_timm_pvt_v2(shiftadd, tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("pvt_v2_b0", pretrained=False, num_classes=4, embed_dims=[16, 32, 40, 64],
                            num_heads=[1, 2, 5, 8], depths=[1, 1, 1, 1])
    m = shiftadd.export(net, tmp_path / "pvt", config={"img_size": 64})
    assert m.inspect()["architecture"] == "pvt_v2" and m.input_shape == (3, 64, 64)
    cfg = json.loads((tmp_path / "pvt" / "config.json").read_text())
    assert cfg["num_heads"] == [1, 2, 5, 8] and cfg["pretrained_cfg"]["input_size"] == [3, 64, 64]
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    assert rel_error(m.session().run(x), torch_logits(net, x)) <= 1e-4


def test_export_hf_vit_and_state_dict(shiftadd, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=64,
                                 num_attention_heads=4, intermediate_size=96, num_labels=3)
    net = transformers.ViTForImageClassification(cfg)
    m = shiftadd.export(net, tmp_path / "hf", labels=["cat", "dog", "bird"])
    assert m.labels == ["cat", "dog", "bird"] and m.inspect()["heads"] == 4
    pre = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 32, "width": 32} and pre["image_mean"] == [0.5] * 3
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    want = torch_logits(net, x, hf=True)
    assert rel_error(m.session().run(x), want) <= 1e-4
    # A bare state dict needs the config the tensors cannot tell (heads, eps).
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    m2 = shiftadd.export(sd, tmp_path / "sd", config={"num_attention_heads": 4, "layer_norm_eps": 1e-12})
    assert rel_error(m2.session().run(x), want) <= 1e-4


def test_export_refuses_overwrite_and_bad_models(shiftadd, tmp_path):
    timm = pytest.importorskip("timm")
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32, depth=1)
    shiftadd.export(net, tmp_path / "m")
    stamp = (tmp_path / "m" / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(shiftadd.Error, match="already exists"):
        shiftadd.export(net, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").stat().st_mtime_ns == stamp
    shiftadd.export(net, tmp_path / "m", overwrite=True)
    pooled = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32, depth=1,
                               global_pool="avg")
    with pytest.raises(shiftadd.Error, match="global_pool"):
        shiftadd.export(pooled, tmp_path / "pooled")
    assert not (tmp_path / "pooled").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shiftadd-export")]
