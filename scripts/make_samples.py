"""Write a folder of generated sample images (scenes, and three exact copies: the same photo
imported twice is common).

Usage: python scripts/make_samples.py OUT_DIR [COUNT]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from freesel_backend.cli.samples import write_scenes


def main(out_dir: str, count: str = "60") -> None:
    paths = write_scenes(Path(out_dir), int(count), (160, 160))
    for path in paths[:3]:
        shutil.copyfile(path, path.with_name(f"{path.stem}_copy.jpg"))
    print(f"wrote {len(paths) + 3} images to {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:])
