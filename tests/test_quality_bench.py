"""The selection-quality benchmark's code path, at CI size: real Fashion-MNIST, a tiny model."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from benchmarks.quality.__main__ import main, report_methods
from benchmarks.quality.data import DEFAULT_ROOT, IDX_IMAGES_MAGIC, load_split, read_idx

TINY_RUN = [
    "--model", "vit_tiny_patch16_224", "--random-init", "--image-size", "32", "--precision", "fp32",
    "--pool-size", "200", "--test-size", "100", "--budgets", "10", "40", "--seeds", "1",
]


@pytest.mark.slow
def test_report_writes_a_table_and_plot_with_every_method_and_budget(tmp_path: Path) -> None:
    assert main([*TINY_RUN, "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]) == 0
    table = (tmp_path / "quality_results.md").read_text()
    for method in report_methods():
        row = next(line for line in table.splitlines() if line.startswith(f"| {method.name} |"))
        assert len(row.split("|")) == 2 + 1 + 2 + 1  # name, budgets 10 and 40, seconds
    assert (tmp_path / "quality_results.png").stat().st_size > 10_000
    # Rerunning reads the cached features instead of extracting again.
    assert main([*TINY_RUN, "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "pool features: loaded from cache" in (tmp_path / "quality_results.md").read_text()


@pytest.mark.slow
def test_tuning_never_reads_the_test_split(tmp_path: Path) -> None:
    train_only = tmp_path / "train_only"
    train_only.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (train_only / name).symlink_to(DEFAULT_ROOT / name)
    arguments = [
        *TINY_RUN,
        "--data-dir",
        str(train_only),
        "--out-dir",
        str(tmp_path),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(["tune", *arguments]) == 0
    assert "| random |" in (tmp_path / "quality_tuning.md").read_text()


def test_missing_data_names_the_debian_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY_RUN, "--data-dir", str(tmp_path), "--out-dir", str(tmp_path)]) == 2
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err


def test_fashion_mnist_splits_have_their_published_sizes() -> None:
    train, test = load_split("train"), load_split("t10k")
    assert train.images.shape == (60_000, 28, 28) and test.images.shape == (10_000, 28, 28)
    assert np.array_equal(np.bincount(test.labels), np.full(10, 1000))


def test_an_idx_file_with_the_wrong_magic_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    with gzip.open(path, "wb") as handle:
        handle.write((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([1, 2, 3]))
    with pytest.raises(ValueError, match="IDX magic 2049, expected 2051"):
        read_idx(path, IDX_IMAGES_MAGIC)
