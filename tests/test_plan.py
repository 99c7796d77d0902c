"""``python -m jdjudge.plan``: topology names, the known architectures, the abstract batch
against the real pipeline's, the verdict, and the compiled step's memory on simulated CPUs
(the suite's 4 devices; one run as a subprocess, the CLI end to end)."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jdjudge import plan as plan_cli
from jdjudge.config.cli import load_config
from jdjudge.data.pipeline import build_judgment_data
from jdjudge.data.prefetch import local_batch
from jdjudge.models.architectures import KNOWN_MODELS, known_hf_config
from jdjudge.models.decoder import abstract_params
from jdjudge.models.hf_config import decoder_config_from_hf
from jdjudge.planning import step as planned
from jdjudge.planning.abstract_batch import abstract_batch, num_labels
from jdjudge.planning.memory import GIB, DeviceMemory, Verdict, out_of_memory
from jdjudge.planning.topology import TopologyError, TopologySpec, parse_topology
from jdjudge.sharding import make_mesh
from tests.cli_helpers import cli_env, run_module
from tests.conftest import PROJECT_ROOT

TINY = f"--config={PROJECT_ROOT / 'configs/tiny.py'}"


@pytest.mark.parametrize(
    ("name", "family", "shape", "devices", "hbm_gib"),
    [
        ("v5e:4x4", "v5e", (4, 4), 16, 16),
        ("v5e-16", "v5e", (4, 4), 16, 16),  # v5e-N: chips
        ("v5litepod-8", "v5e", (2, 4), 8, 16),
        ("v6e-8", "v6e", (2, 4), 8, 32),
        ("v4-8", "v4", (2, 2, 1), 4, 32),  # v4-N: TensorCores, two per chip
        ("v4-32", "v4", (2, 2, 4), 16, 32),
        ("v5p-8", "v5p", (2, 2, 1), 4, 95),
        ("v5p:2x2x2", "v5p", (2, 2, 2), 8, 95),
        ("V5E-256", "v5e", (16, 16), 256, 16),
    ],
)
def test_topology_names(name, family, shape, devices, hbm_gib):
    spec = parse_topology(name)
    assert (spec.family, spec.shape, spec.num_devices) == (family, shape, devices)
    assert spec.hbm_bytes == hbm_gib * GIB


def test_topology_options_for_libtpu():
    assert parse_topology("v4-8").libtpu_args() == (
        "v4:2x2x1", {"chip_config_name": "megacore", "chips_per_host_bounds": (2, 2, 1)})  # fmt: skip
    assert parse_topology("v5p-8").libtpu_args()[0] == "v5:2x2x1"
    assert parse_topology("v5e-8").libtpu_args()[1] == {"chips_per_host_bounds": (2, 4, 1)}
    name, options = parse_topology("v5e-16", num_slices=2).libtpu_args()
    assert (name, options["num_slices"], options["chips_per_host_bounds"]) == ("v5e:4x4", 2, (2, 2, 1))  # fmt: skip
    assert [parse_topology(n).hosts for n in ("v4-8", "v5e-8", "v5e-16", "v6e-256")] == [
        1,
        1,
        4,
        64,
    ]
    assert parse_topology("v5e-16", num_slices=2).hosts == 8
    assert parse_topology("cpu:8", num_slices=2) == TopologySpec("cpu", (8,), 2)
    assert parse_topology("cpu:8", num_slices=2).num_devices == 16


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("v3-8", "known: v4:<grid>, v5e:<grid>, v5p:<grid>, v6e:<grid>, cpu:<devices>"),
        ("v5e:4", "v5e takes a 2-D grid"),
        ("v4:2x2", "v4 takes a 3-D grid"),
        ("v4-12", "counts TensorCores"),
        ("v5e-6", "counts chips"),
        ("cpu:0", "expected cpu:<devices>"),
    ],
)
def test_bad_topology_names(name, message):
    with pytest.raises(TopologyError, match=message):
        parse_topology(name)


@pytest.mark.parametrize(
    ("hub_id", "count"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248),
        ("meta-llama/Llama-3.1-8B", 8_030_261_248),
        ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512),
        ("Qwen/Qwen2.5-7B", 7_615_616_512),
    ],
)
def test_known_architectures_give_the_published_parameter_counts(hub_id, count):
    config = decoder_config_from_hf(known_hf_config(hub_id), max_seq_len=4096, scan_layers=True)
    assert config.param_dtype == "bfloat16"
    shapes = jax.tree.leaves(abstract_params(config))
    assert sum(math.prod(leaf.shape) for leaf in shapes) == count


def test_table_is_used_only_without_the_real_config(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    config, source = planned.hf_config_for("Qwen/Qwen2.5-7B-Instruct")
    assert (config["vocab_size"], source) == (152064, planned.TABLE_SOURCE)
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    local, source = planned.hf_config_for(str(tmp_path))
    assert local["num_hidden_layers"] == 2 and source.endswith("config.json")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not a known model"):
        planned.hf_config_for("someone/unknown-model")
    assert set(KNOWN_MODELS) >= {"meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B"}


def test_verdict_lines():
    assert Verdict(3 * GIB, 4 * GIB).line() == "fits: yes (margin 1.00 GiB, 25%)"
    assert Verdict(5 * GIB, 4 * GIB).line() == "fits: NO (short by 1.00 GiB)"
    assert Verdict(5 * GIB, 4 * GIB).fits is False and Verdict(1, None).fits is None
    memory = DeviceMemory(arguments=10, outputs=8, aliased=7, temporaries=5, generated_code=2)
    assert memory.total == 18  # the donated state is held once


def test_xla_out_of_memory_refusal_is_read():
    """XLA:TPU refuses a program that cannot fit at compile time (libtpu 0.0.42's words)."""
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for "
               "HLO temporaries (33.04G) exceeds available HBM (15.75G).")  # fmt: skip
    assert out_of_memory(message) == (int(33.04 * GIB), int(15.75 * GIB))
    assert out_of_memory(message.replace("33.04G", "1.76T"))[0] == int(1.76 * (1 << 40))
    assert out_of_memory("INVALID_ARGUMENT: something else") is None


def _real_batch(argv: list[str], mesh) -> dict[str, np.ndarray]:
    """A training batch of the tiny config's real pipeline, as the loop gives it to the step."""
    from jdjudge.train import batch_source

    config = load_config(["train", TINY, *argv])
    data = build_judgment_data(config.data, default_tokenizer=config.model.init_from)
    return local_batch(batch_source(config, data, mesh).train_batch(0), data.has_truth)


@pytest.mark.parametrize("packing", [False, True])
def test_abstract_batch_matches_the_real_pipeline(packing):
    argv = ["--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.data.num_items=300",
            f"--config.data.packing={packing}", "--config.data.tokens_per_batch=1024"]  # fmt: skip
    mesh = make_mesh(load_config(["train", TINY, *argv]).mesh.shape(), jax.devices()[:4])
    real = _real_batch(argv, mesh)
    config = load_config(["plan", TINY, *argv])
    abstract = abstract_batch(config, mesh, num_labels(config)[0])
    assert jax.tree.structure(abstract) == jax.tree.structure(real)
    slot_keys = ("answer_index", "targets", "true_targets", "weights", "item_index")
    width = real["tokens"].shape[1]
    for key, value in real.items():
        assert abstract[key].dtype == value.dtype, key
        assert abstract[key].sharding.spec == PartitionSpec(("data", "fsdp")), key
        shape = list(abstract[key].shape)
        if packing and key in slot_keys:  # the most item slots a row can have (1-token items)
            assert shape[1] == min(64, width) >= value.shape[1], key
            shape[1] = value.shape[1]
        assert tuple(shape) == value.shape, key


def _plan(*argv: str) -> dict:
    """The report of an in-process plan (on the suite's simulated CPU devices)."""
    return plan_cli.plan(plan_cli.parse_args(["plan", TINY, *argv]))


def test_sharding_takes_effect_in_the_compiled_step():
    """An independent check of the shardings: the parameters' and Adam moments' bytes per
    device shrink about 4x from one device (or 4 replicas) to fsdp=4, and each device's
    FLOPs about 4x from one device to 4 data-parallel ones (cost analysis is per device)."""
    one = _plan("--topology=cpu:1", "--set", "mesh.data=1")
    replicas = _plan("--topology=cpu:4", "--set", "mesh.data=4")
    fsdp = _plan("--topology=cpu:4", "--set", "mesh.data=1", "--set", "mesh.fsdp=4")
    assert fsdp["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    args = {name: r["memory_per_device"]["arguments"] for name, r in
            (("one", one), ("replicas", replicas), ("fsdp", fsdp))}  # fmt: skip
    assert 3.5 < args["one"] / args["fsdp"] < 4.1, args
    assert 3.5 < args["replicas"] / args["fsdp"] < 4.1, args
    assert 3.5 < one["flops_per_device"] / replicas["flops_per_device"] < 4.1
    assert replicas["flops_global"] == pytest.approx(4 * replicas["flops_per_device"])
    assert one["model"]["parameters"] == fsdp["model"]["parameters"] > fsdp["model"]["trainable"]


def test_num_slices_multiplies_the_devices_and_sets_dcn_data():
    report = _plan("--topology=cpu:2", "--num_slices=2")
    assert (report["devices"], report["num_slices"]) == (4, 2)
    assert report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}


def test_require_fit_and_errors(capsys):
    base = ["plan", TINY, "--topology=cpu:1", "--hbm=0.0001"]
    assert plan_cli.main(base) == 0  # not fitting is an answer
    assert "fits: NO (short by" in capsys.readouterr().out
    assert plan_cli.main([*base, "--require_fit"]) == 1
    capsys.readouterr()
    for argv, message in [
        ([TINY, "--topology=v3-8"], "unknown topology 'v3-8'; known: v4:<grid>"),
        ([TINY, "--topology=cpu:1", "--set", "model.nope=1"], "unknown config key 'model.nope'"),
        ([TINY], "missing --topology"),
        ([TINY, "--topology=cpu:1", "--bogus"], "unknown argument '--bogus'"),
        ([TINY, "--topology=cpu:1", "--output=/no/such/dir/plan.json"], "existing directory"),
        ([TINY, "--topology=cpu:1", "--hbm=0"], "--hbm=0: must be > 0"),
        (
            [TINY, "--topology=cpu:1", "--config.data.name=jsonl", "--config.data.path=x"],
            "pass --labels=K",
        ),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            plan_cli.main(["plan", *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_cli_on_simulated_cpus(tmp_path):
    """The module end to end, as a user runs it without libtpu: text and JSON agree."""
    out = tmp_path / "plan.json"
    result = run_module(
        "jdjudge.plan",
        [TINY, "--topology=cpu:4", "--set", "mesh.data=1", "--config.mesh.fsdp=4",
         f"--output={out}"],
        cwd=tmp_path, env=cli_env(tmp_path),
    )  # fmt: skip
    assert result.status == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["compiled_for"] == "cpu" and report["devices"] == 4
    assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert report["batch"] == {"layout": "padded", "rows": 32, "width": 16, "tokens": 512,
                               "labels": 3, "labels_from": report["batch"]["labels_from"]}  # fmt: skip
    memory = report["memory_per_device"]
    assert memory["total"] == (memory["arguments"] + memory["outputs"] - memory["aliased"]
                               + memory["temporaries"] + memory["generated_code"])  # fmt: skip
    assert memory["aliased"] > 0  # the donated state
    assert report["fits"] is None and report["flops_per_device"] > 0
    assert "compiling the train step for cpu:4" in result.stderr
    lines = result.stdout
    assert "NOTE: compiled for simulated CPU devices" in lines
    assert "mesh: data 1 × fsdp 4 × tensor 1" in lines
    assert f"{report['model']['parameters']:,} parameters" in lines
    assert "fits: unknown" in lines and "FLOPs per step:" in lines
