"""Benchmarks of FreeSel's speed and selection quality; not part of the installed package."""
