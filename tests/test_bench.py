"""The benchmark's code path at tiny sizes (its figures are meaningless here: no timing checks)."""

from __future__ import annotations

import pytest

from benchmarks import extraction
from benchmarks import performance as bench
from freesel_backend import select


@pytest.mark.slow
def test_bench_smoke_run_prints_one_line_per_selection_target(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--smoke", "--only", "selection", "--only", "paper"])
    printed = capsys.readouterr().out
    assert "selection vs reference" not in printed  # that target is measured at N=5,000 only
    assert "[PASS] fds picks identical to the reference's" in printed
    assert "paper scale (N=400" in printed
    assert "peak memory" in printed
    assert printed.count("load ") >= 3
    assert "numpy BLAS openblas" in printed  # the kernel numpy's float32 products run on


def test_the_first_ranking_target_times_both_precisions_of_the_near_duplicate_search(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench.main(["--smoke", "--only", "ranking"])
    printed = capsys.readouterr().out
    assert "N=   300 K=1 typical" in printed and "N=   300 K=5     fds" in printed
    assert printed.count("through bfloat16") == 2 and printed.count("float32") >= 2
    assert "first ranking of 300 tasks (K=1, typical, 300 picks)" in printed


def test_the_blas_line_says_when_the_environment_chose_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert "set by the environment: OPENBLAS_CORETYPE=Haswell" in bench.numpy_blas()
    for name in bench.OPENBLAS_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    assert "environment" not in bench.numpy_blas()


def test_reference_and_product_fds_pick_the_same_images() -> None:
    patterns = bench.semantic_patterns(300, seed=1)
    reference = bench.reference_select(patterns, 20, "fds", seed=0)
    ours = select(patterns, 19, strategy="fds", seeds=[reference[0]])
    assert ours.picks.tolist() == reference[1:]


def test_the_extraction_bench_prints_the_bare_and_end_to_end_rates_and_each_stage_share(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    for name, value in {
        "FREESEL_MODEL": "vit_tiny_patch16_224", "FREESEL_TEST_RANDOM_INIT": "true", "FREESEL_TEST_IMAGE_SIZE": "64",
        "FREESEL_DEVICE": "cpu", "FREESEL_BATCH_SIZE": "4", "FREESEL_CHUNK_SIZE": "8", "MODEL_DIR": str(tmp_path),
    }.items():
        monkeypatch.setenv(name, value)
    extraction.main(["--images", "12", "--rounds", "1", "--latency-ms", "0", "30", "--download-workers", "2", "8"])
    printed = capsys.readouterr().out
    for latency, workers in (("  0", " 2"), ("  0", " 8"), (" 30", " 2"), (" 30", " 8")):
        assert f"end to end, {latency} ms per download, {workers} download workers: " in printed
    assert printed.count("of the bare forward's") == 4
    assert printed.count("download ") >= 4 and printed.count("forward ") >= 4 and printed.count("store ") >= 4
    assert printed.count("(target >= 90%, not the default)") == 2  # 2 workers is not the default 8
