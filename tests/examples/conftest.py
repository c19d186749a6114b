"""Fixtures of the example tests: the Machine Learning Guide's image and dataset."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from docker_helpers import build_example_image
from helpers_examples import EXAMPLES, run_in_image

ML_GUIDE = EXAMPLES / "ml-guide"
IMAGE = "faice-examples/ml-guide"


def _context_hash() -> str:
    digest = hashlib.sha256()
    for name in ("Dockerfile", "cnn-training.py", "make-dataset.py"):
        digest.update((ML_GUIDE / name).read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def ml_guide_image(docker_client, test_image) -> str:
    """The guide's image, built once (README step 2); rebuilt only when its sources change."""
    return build_example_image(docker_client, ML_GUIDE, IMAGE, _context_hash(), test_image)


@pytest.fixture(scope="session")
def pcam_dataset(ml_guide_image, tmp_path_factory) -> Path:
    """README step 1: the synthetic PCAM-like dataset, made by make-dataset.py in the image."""
    out = tmp_path_factory.mktemp("pcam")
    run_in_image(ml_guide_image, out, "python3", "/home/cc/make-dataset.py", "pcam")
    files = sorted(p.name for p in (out / "pcam").iterdir())
    assert files == [f"camelyonpatch_level_2_split_{s}_{k}.h5" for s in ("train", "valid") for k in ("x", "y")]
    return out / "pcam"
