"""Hostile GPU and placement settings: what a client or the environment puts there never
reaches Docker or the scheduler unchecked.

- ``container.settings.gpus.vram``/``shared`` and ``batchConcurrencyLimit`` of a posted RED
  are schema-checked (400 before anything is stored);
- device ids from ``CUDA_VISIBLE_DEVICES``/Slurm only select devices of the inventory: an id
  that names none (e.g. an option-like string) is never handed to Docker;
- a stored experiment with a malformed limit (written by an older server) cannot disable
  the per-experiment cap.
"""

from __future__ import annotations

import pytest
from agency_reds import minimal

from faice.agency.placement import DEFAULT_BATCH_CONCURRENCY, concurrency_limit
from faice.agency.submit import BadRequest, check_red
from faice.runtime.gpus import Gpu, restrict


@pytest.mark.parametrize("gpus", [
    {"vendor": "nvidia", "count": 1, "vram": "8000; rm -rf /"},
    {"vendor": "nvidia", "count": 1, "vram": -1},
    {"vendor": "nvidia", "count": 1, "shared": "yes", "vram": 100},
    {"vendor": "nvidia", "count": 1, "shared": True},  # sharing without a reservation
])
def test_agency_rejects_hostile_gpu_settings(gpus):
    red = minimal()
    red["container"]["settings"]["gpus"] = gpus
    with pytest.raises(BadRequest, match="gpus"):
        check_red(red)


@pytest.mark.parametrize("limit", [0, -5, "1", 1.5, True])
def test_agency_rejects_a_bad_batch_concurrency_limit(limit):
    red = minimal()
    red["execution"]["settings"]["batchConcurrencyLimit"] = limit
    with pytest.raises(BadRequest, match="batchConcurrencyLimit"):
        check_red(red)


def test_malformed_stored_limit_falls_back_to_the_default():
    for bad in (0, -1, "5", None, True):
        assert concurrency_limit({"settings": {"batchConcurrencyLimit": bad}}) == DEFAULT_BATCH_CONCURRENCY
    assert concurrency_limit({"settings": {"batchConcurrencyLimit": 3}}) == 3


def test_outer_allocation_ids_never_reach_docker_unless_they_name_a_device():
    inventory = [Gpu("0", "GPU-aaaa", 16000), Gpu("1", "GPU-bbbb", 16000)]
    kept = restrict(inventory, environ={"CUDA_VISIBLE_DEVICES": "GPU-aaaa,--privileged,GPU-,all"})
    assert [g.uuid for g in kept] == ["GPU-aaaa"]  # "GPU-" is an ambiguous prefix: no device
    assert restrict(inventory, environ={"SLURM_JOB_GPUS": "0;id"}) == []
