"""Extraction precision: float32 by default; ``auto`` takes bfloat16 where the hardware multiplies it
natively; patterns of one precision never pass for the other's."""

from __future__ import annotations

import pytest

from freesel_backend.server.settings import Settings, SettingsError
from freesel_backend.engine.bfloat16 import native_bfloat16
from freesel_backend.server.task_images import version_of
from tests.helpers import tiny_extractor


def test_fp32_is_the_default_and_auto_or_bf16_can_be_chosen() -> None:
    assert Settings.from_env({}).precision == "fp32"
    assert Settings.from_env({"FREESEL_PRECISION": "auto"}).precision == "auto"
    assert Settings.from_env({"FREESEL_PRECISION": " bf16 "}).precision == "bf16"
    with pytest.raises(SettingsError, match="FREESEL_PRECISION must be one of auto, fp32, bf16, got 'fp16'"):
        Settings.from_env({"FREESEL_PRECISION": "fp16"})


@pytest.mark.slow
def test_auto_extracts_in_bf16_exactly_where_the_cpu_multiplies_bfloat16_natively() -> None:
    assert tiny_extractor(precision="auto").precision == ("bf16" if native_bfloat16() else "fp32")
    assert tiny_extractor(precision="fp32").precision == "fp32"
    assert tiny_extractor(precision="bf16").precision == "bf16"


@pytest.mark.slow
def test_bf16_and_fp32_patterns_are_stored_under_different_versions() -> None:
    fp32, bf16 = version_of(tiny_extractor(precision="fp32")), version_of(tiny_extractor(precision="bf16"))
    assert fp32 != bf16
    assert version_of(tiny_extractor()) == fp32  # the fp32 name is the one stores had before
