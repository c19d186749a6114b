#!/usr/bin/env python3
"""Write a small synthetic dataset shaped like PCAM (PatchCamelyon).

The real PCAM dataset is 7 GB of 96x96 RGB tiles of lymph-node sections, labelled 1 when
the centre holds tumour tissue. This generator writes the same files and layout
(``camelyonpatch_level_2_split_{train,valid}_{x,y}.h5`` with datasets ``x`` of shape
(N, 96, 96, 3) uint8 and ``y`` of shape (N, 1, 1, 1) uint8) but only a few MB, so the
Machine Learning Guide runs anywhere in seconds. Positive tiles carry a dark, purple
"nucleus cluster" in the centre, which a small model can learn. Seeded: the same
arguments always give the same bytes of data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np

TILE = 96
PREFIX = "camelyonpatch_level_2_split"


def make_tiles(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pink, noisy "tissue" tiles; half of them with a dark blob in the centre."""
    labels = rng.integers(0, 2, size=count).astype(np.uint8)
    base = np.array([225.0, 170.0, 200.0])  # eosin pink
    tiles = base + rng.normal(0.0, 18.0, size=(count, TILE, TILE, 3))
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    for i in np.flatnonzero(labels):
        cy, cx = rng.uniform(32, 64, size=2)
        radius = rng.uniform(10, 20)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        tiles[i] -= blob[..., None] * np.array([110.0, 120.0, 40.0])  # haematoxylin purple
    x = np.clip(tiles, 0, 255).astype(np.uint8)
    y = labels.reshape(count, 1, 1, 1)
    return x, y


def write_split(out_dir: Path, split: str, count: int, rng: np.random.Generator) -> None:
    x, y = make_tiles(count, rng)
    for key, array in (("x", x), ("y", y)):
        path = out_dir / f"{PREFIX}_{split}_{key}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset(key, data=array, compression="gzip", compression_opts=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the .h5 files into (created)")
    parser.add_argument("--train", type=int, default=256, help="number of training tiles (default 256)")
    parser.add_argument("--valid", type=int, default=64, help="number of validation tiles (default 64)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args()

    args.out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    write_split(args.out_dir, "train", args.train, rng)
    write_split(args.out_dir, "valid", args.valid, rng)
    print(f"wrote {args.train} training and {args.valid} validation tiles to {args.out_dir}")


if __name__ == "__main__":
    main()
