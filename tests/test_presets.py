"""Presets by kind of labelling task: which applies (label config, per-project task), and how
explicitly set values and presets combine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import freesel_backend
from freesel_backend.cli.project import describe_status
from freesel_backend.server.settings import ProjectSettings, SettingsError
from freesel_backend.labelstudio.label_config import LabelConfigError, task_of_label_config
from tests.test_cli import TINY, image_folder, run_cli  # noqa: F401 (image_folder is a fixture)

BOXES = """<View><Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image"><Label value="cat"/></RectangleLabels></View>"""
CHOICES = """<View><Image name="image" value="$image"/>
  <Choices name="class" toName="image"><Choice value="cat"/></Choices></View>"""


def test_each_kind_of_task_has_the_three_selection_settings_and_segmentation_uses_detections() -> None:
    for kind in ("classification", "detection", "segmentation"):
        assert {"patterns_per_image", "attention_ratio", "strategy"} <= set(freesel_backend.preset(kind))
    assert freesel_backend.preset("segmentation") == freesel_backend.preset("detection")
    assert freesel_backend.preset("classification") != freesel_backend.preset("detection")


def test_an_unknown_kind_is_a_clear_error_and_a_preset_cannot_be_changed_by_its_caller() -> None:
    with pytest.raises(ValueError, match="unknown task 'ocr'; choose one of classification, detection, segmentation"):
        freesel_backend.preset("ocr")
    freesel_backend.preset("detection")["strategy"] = "prob"
    assert freesel_backend.preset("detection")["strategy"] != "prob"


@pytest.mark.parametrize(
    "tag",
    ["RectangleLabels", "PolygonLabels", "BrushLabels", "KeyPointLabels", "EllipseLabels", "Rectangle", "Polygon"],
)
def test_a_label_config_with_an_object_tag_is_detection_and_says_which_tag(tag: str) -> None:
    config = f'<View><Image name="image" value="$image"/><{tag} name="r" toName="image"/>' \
             '<Choices name="c" toName="image"><Choice value="x"/></Choices></View>'
    assert task_of_label_config(config) == ("detection", f"from the label config's {tag}")


def test_only_choices_or_taxonomy_is_classification() -> None:
    assert task_of_label_config(CHOICES) == ("classification", "from the label config's Choices")
    taxonomy = '<View><Image name="i" value="$i"/><Taxonomy name="t" toName="i"><Choice value="a"/></Taxonomy></View>'
    assert task_of_label_config(taxonomy) == ("classification", "from the label config's Taxonomy")
    assert task_of_label_config('<View><Image name="i" value="$i"/></View>')[0] == "classification"
    with pytest.raises(LabelConfigError, match="not valid XML"):
        task_of_label_config("<View>")


def test_unset_values_follow_the_preset_and_explicit_ones_win() -> None:
    detection = freesel_backend.preset("detection")
    settings = ProjectSettings().updated({"strategy": "prob"}).with_preset("detection")
    assert settings.strategy == "prob" and settings.explicit == ("strategy",)
    assert (settings.patterns_per_image, settings.attention_ratio) == (
        detection["patterns_per_image"],
        detection["attention_ratio"],
    )
    # Back to classification: the explicit strategy stays, the rest follows.
    back = settings.with_preset("classification")
    assert (
        back.strategy == "prob"
        and back.patterns_per_image == freesel_backend.preset("classification")["patterns_per_image"]
    )
    # Clearing the list hands every value back to the preset.
    assert settings.updated({"explicit": []}).with_preset("detection").strategy == detection["strategy"]


def test_the_per_project_task_overrides_the_label_config() -> None:
    from_config = {
        "label_config_task": "detection",
        "label_config_task_reason": "from the label config's RectangleLabels",
    }
    assert ProjectSettings().preset_in_use(from_config) == ("detection", "from the label config's RectangleLabels")
    assert ProjectSettings(task="classification").preset_in_use(from_config) == ("classification", "set per project")
    assert ProjectSettings().preset_in_use({})[0] == "classification"
    assert ProjectSettings(patterns_per_image=3, explicit=["patterns_per_image"]).describe_preset(from_config) == (
        "detection, from the label config's RectangleLabels (patterns_per_image set per project)"
    )
    with pytest.raises(SettingsError, match="task must be one of classification, detection, segmentation"):
        ProjectSettings(task="boxes")
    with pytest.raises(SettingsError, match="explicit must be a list of settings among"):
        ProjectSettings(explicit=["budget"])


def test_settings_survive_storage_and_values_stored_before_presets_count_as_explicit_where_not_the_old_default() -> (
    None
):
    settings = ProjectSettings(task="detection").updated({"attention_ratio": 0.7}).with_preset("detection")
    assert ProjectSettings.from_stored(json.loads(json.dumps(settings.to_dict()))) == settings
    legacy = {"patterns_per_image": 5, "attention_ratio": 1.0, "strategy": "typical", "budget": 10}
    assert ProjectSettings.from_stored(legacy).explicit == ("patterns_per_image",)


def test_status_text_says_which_preset_is_in_use_and_why() -> None:
    status = {
        "project": 3,
        "settings": ProjectSettings().to_dict(),
        "failed": 0,
        "failures": [],
        "last_selection_at": None,
        "jobs": {},
        "progress": {
            "tasks_done": 0,
            "tasks_total": 0,
            "percent": 100.0,
            "tasks_per_s": None,
            "eta_s": None,
            "selection": None,
        },
        "preset": {"description": "detection, from the label config's RectangleLabels"},
    }
    assert "preset: detection, from the label config's RectangleLabels" in describe_status(status)


@pytest.mark.slow
def test_cli_task_sets_the_preset_and_an_explicit_option_wins(image_folder: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "ranking.json"
    result = run_cli(
        "select",
        str(image_folder),
        "--budget",
        "3",
        *TINY,
        "--task",
        "detection",
        "--strategy",
        "prob",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    settings = json.loads(out.read_text())["settings"]
    detection = freesel_backend.preset("detection")
    assert settings["task"] == "detection" and settings["strategy"] == "prob"
    assert (settings["patterns_per_image"], settings["attention_ratio"]) == (
        detection["patterns_per_image"],
        detection["attention_ratio"],
    )
