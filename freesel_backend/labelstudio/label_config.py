"""What FreeSel reads from a project's labeling config: the image field and the kind of task.

Errors say how to fix the config; they are shown to the user in the project's status and as the
failure reason of its tasks.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree


class LabelConfigError(ValueError):
    """The project's labeling config cannot be used with FreeSel."""


def parse(label_config: str) -> ElementTree.Element:
    """The config's root element; a config that is not XML is a :class:`LabelConfigError`."""
    try:
        return ElementTree.fromstring(label_config or "")
    except ElementTree.ParseError as error:
        raise LabelConfigError(f"the project's labeling config is not valid XML: {error}") from None


def image_field_of(label_config: str) -> str:
    """The task data field of the config's first ``<Image value="$field">``."""
    for tag in parse(label_config).iter("Image"):
        value = tag.get("value", "")
        if value.startswith("$") and len(value) > 1:
            return value[1:]
    raise LabelConfigError(
        'FreeSel ranks images, but the labeling config has no <Image value="$field"> tag; '
        'add one, e.g. <Image name="image" value="$image"/>'
    )


# Label Studio's image control tags that label objects (regions) rather than the whole image.
OBJECT_TAGS = (
    "RectangleLabels", "Rectangle", "PolygonLabels", "Polygon", "BrushLabels", "Brush", "KeyPointLabels", "KeyPoint",
    "EllipseLabels", "Ellipse", "BitmaskLabels", "Bitmask", "MagicWand",
)
IMAGE_CLASS_TAGS = ("Choices", "Taxonomy")


def task_of_label_config(label_config: str) -> tuple[str, str]:
    """The kind of task (a preset name) the config labels, and why: any object tag makes it
    detection ("detection, from the label config's RectangleLabels"); otherwise classification."""
    tags = [element.tag for element in parse(label_config).iter()]
    found = [tag for tag in OBJECT_TAGS if tag in tags]
    if found:
        return "detection", f"from the label config's {', '.join(found)}"
    classes = [tag for tag in IMAGE_CLASS_TAGS if tag in tags]
    if classes:
        return "classification", f"from the label config's {', '.join(classes)}"
    return "classification", "the default: the label config has no object or class tag"
