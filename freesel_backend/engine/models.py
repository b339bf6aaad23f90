"""Building the frozen ViT backbone by name, with its weights from the hub or a local file."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

log = logging.getLogger(__name__)

DEFAULT_MODEL = "vit_small_patch16_224.dino"
# Keys a backbone may lack without harm: classifier / pooling heads we never use.
HEAD_PREFIXES = ("head.", "fc_norm.", "head_drop.")
# Wrappers seen in training checkpoints (DINO saves {"teacher": {"module.backbone.*": ...}}).
CHECKPOINT_WRAPPERS = ("teacher", "state_dict", "model", "module")
KEY_PREFIXES = ("module.", "backbone.")


class WeightsError(RuntimeError):
    """The backbone's weights could not be loaded; the message says how to fix it."""


@dataclass(frozen=True)
class BackboneSpec:
    """What to build: a timm model name, where its weights come from, and its input size."""

    name: str = DEFAULT_MODEL
    weights: Path | None = None
    random_init: bool = False
    image_size: int | None = None

    @property
    def weights_label(self) -> str:
        if self.random_init:
            return "random-init"
        return str(self.weights) if self.weights else "pretrained"


def create_backbone(spec: BackboneSpec) -> torch.nn.Module:
    """A frozen, eval-mode timm ViT ready for patch-token extraction."""
    kwargs: dict[str, Any] = {"num_classes": 0}
    if spec.image_size is not None:
        kwargs.update(img_size=spec.image_size)
    if spec.random_init:
        log.warning("model %s uses RANDOM weights (--random-init): rankings are not meaningful", spec.name)
        # Seeded so two extractors with random weights agree (tests, demos, benchmarks).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _create(spec.name, pretrained=False, **kwargs)
    elif spec.weights is not None:
        model = _create(spec.name, pretrained=False, **kwargs)
        load_checkpoint(model, spec)
    else:
        model = _create_pretrained(spec, kwargs)
    _check_vit(model, spec.name)
    return model.eval().requires_grad_(False)


def _create(name: str, *, pretrained: bool, **kwargs: Any) -> torch.nn.Module:
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models('vit_*'))")
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _create_pretrained(spec: BackboneSpec, kwargs: dict[str, Any]) -> torch.nn.Module:
    try:
        return _create(spec.name, pretrained=True, **kwargs)
    except ValueError:
        raise
    except Exception as error:
        raise WeightsError(
            f"Could not load pretrained weights for model {spec.name!r} from timm's source "
            f"(Hugging Face hub or its local cache): {_first_line(error)}; connect once to download "
            f"them, or pass a local checkpoint with --weights PATH (FREESEL_WEIGHTS)."
        ) from error


def load_checkpoint(model: torch.nn.Module, spec: BackboneSpec) -> None:
    """Load a timm .safetensors/.pth or an official DINO .pth into ``model``, strictly."""
    path = Path(spec.weights) if spec.weights else None
    if path is None or not path.is_file():
        raise WeightsError(
            f"Could not load weights for model {spec.name!r}: no file at {path}; "
            f"pass --weights with the path of a .safetensors or .pth checkpoint."
        )
    try:
        state_dict = checkpoint_filter_fn(_backbone_state_dict(read_checkpoint(path)), model)
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except Exception as error:
        raise WeightsError(
            f"Could not load weights for model {spec.name!r} from {path}: {_first_line(error)}; "
            f"check that the checkpoint was trained for this architecture."
        ) from error
    missing = [key for key in missing if not key.startswith(HEAD_PREFIXES)]
    if missing:
        raise WeightsError(
            f"Could not load weights for model {spec.name!r} from {path}: {len(missing)} backbone "
            f"tensors are missing (e.g. {', '.join(missing[:3])}); check that the checkpoint "
            f"matches the model name given with --model."
        )
    ignored = [key for key in unexpected if not key.startswith(HEAD_PREFIXES)]
    if ignored:
        log.info("ignored %d checkpoint tensors not used by %s (e.g. %s)", len(ignored), spec.name, ignored[:3])


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
    needed = ("patch_embed", "blocks", "norm", "num_prefix_tokens")
    if not all(hasattr(model, attribute) for attribute in needed) or len(model.blocks) < 2:
        raise ValueError(f"model {name!r} is not a ViT with patch tokens and >= 2 blocks; use a timm vit_* model")
    if not hasattr(model.blocks[-1], "attn") or not hasattr(model.blocks[-1].attn, "qkv"):
        raise ValueError(f"model {name!r}: its last block has no standard qkv attention to read")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
