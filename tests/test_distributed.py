"""Joining a run (``distributed.*`` keys and JAX's variables), the processes' agreement check
and the multi-slice mesh, in one process; tests/test_multihost.py runs two."""

from __future__ import annotations

import dataclasses

import jax
import pytest

from jdjudge import distributed
from jdjudge.config.fields import ConfigError, validate
from jdjudge.config.schema import Config, DistributedConfig
from jdjudge.distributed import Join, plan_join
from jdjudge.sharding import make_mesh

MESH = {"data": 1, "fsdp": -1, "tensor": 1}


def test_nothing_set_means_detect_and_one_process_means_no_join():
    assert plan_join(DistributedConfig(), env={}) == Join(auto=True)
    assert plan_join(DistributedConfig(num_processes=1), env={}) is None
    assert plan_join(DistributedConfig(), env={"JAX_NUM_PROCESSES": "1"}) is None


def test_keys_are_passed_and_unset_ones_left_for_jax_to_detect():
    cfg = DistributedConfig(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)
    assert plan_join(cfg, env={}) == Join(False, "10.0.0.1:1234", 4, 2)
    partial = DistributedConfig(coordinator_address="10.0.0.1:1234")
    assert plan_join(partial, env={}) == Join(False, "10.0.0.1:1234", None, None)


def test_jax_variables_fill_in_and_keys_win_over_them():
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "8", "JAX_PROCESS_ID": "3"}
    assert plan_join(DistributedConfig(), env=env) == Join(False, "h:1", 8, 3)
    cfg = DistributedConfig(coordinator_address="k:2", process_id=5)
    assert plan_join(cfg, env=env) == Join(False, "k:2", 8, 5)
    with pytest.raises(ConfigError, match="JAX_PROCESS_ID='x': must be an integer"):
        plan_join(DistributedConfig(), env={"JAX_PROCESS_ID": "x"})


def test_bad_keys_are_refused_by_the_config_checks():
    for cfg, field in [
        (DistributedConfig(num_processes=0), "distributed.num_processes"),
        (DistributedConfig(num_processes=2, process_id=2), "distributed.process_id"),
    ]:
        with pytest.raises(ConfigError, match=field):
            validate(dataclasses.replace(Config(), distributed=cfg))


def test_a_url_workdir_is_refused_with_what_to_do():
    with pytest.raises(ConfigError, match=r"workdir.*is a URL.*mount the bucket"):
        validate(dataclasses.replace(Config(), workdir="gs://bucket/run"))


def test_detection_in_a_process_where_jax_already_runs_is_one_process():
    jax.devices()  # the backends are up, as for any library caller of train.run
    distributed.initialize(DistributedConfig(), env={})
    assert not jax.distributed.is_initialized() and jax.process_count() == 1


def test_explicit_settings_after_jax_started_are_a_config_error():
    jax.devices()
    cfg = DistributedConfig(coordinator_address="127.0.0.1:9", num_processes=2, process_id=0)
    with pytest.raises(ConfigError, match=r"distributed: .*before any JAX calls"):
        distributed.initialize(cfg, env={})


def test_agreement_is_trivial_for_one_process():
    distributed.check_agreement({"steps": 10, "data": "abc"})


def test_two_slices_need_two_slices_or_processes_and_equal_halves():
    assert make_mesh(MESH).shape["fsdp"] == jax.device_count()
    with pytest.raises(ValueError, match=r"dcn_data=2.*1 slice\(s\) and 1 process\(es\)"):
        make_mesh(MESH, dcn_data=2)
    with pytest.raises(ValueError, match="dcn_data=3 must divide the 4 devices"):
        make_mesh(MESH, dcn_data=3)
