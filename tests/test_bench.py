"""The benchmark's code path at tiny sizes (its figures are meaningless here: no timing checks)."""

from __future__ import annotations

import pytest

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
