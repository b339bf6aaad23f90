"""Selection-quality benchmark: do FreeSel's picks beat random picks on real labelled images?

Run ``python -m benchmarks.quality`` (docs/quality.md). Needs the packages in
requirements-bench.txt and Debian's ``dataset-fashion-mnist``; nothing here is used at run time.
"""
