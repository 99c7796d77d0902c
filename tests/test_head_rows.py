"""``model.head_rows = "labels"``: full fine-tuning that trains only the label tokens' columns
of an untied head. References are independent of the label-head code: parameter counts by
hand, plain ``jax.grad`` over the whole model with the label tokens' own ids, the "all" run
from the same weights, and the HF checkpoint the run started from."""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import numpy as np
import pytest
import torch
from jax.sharding import PartitionSpec
from transformers import AutoModelForCausalLM, AutoTokenizer

from jdjudge import export, train
from jdjudge.checkpoint.manager import RunCheckpoints
from jdjudge.config.schema import AdversarialConfig, Config, LoraConfig, ObjectiveConfig
from jdjudge.sharding import global_batch, make_mesh
from jdjudge.training.jitted import build_steps
from jdjudge.training.model_state import build_model_state, state_layout
from jdjudge.training.optim import make_optimizer
from jdjudge.training.steps import judge_loss
from tests.production import SEQ_LEN, VOCAB, random_batch, tiny_config
from tests.test_judge_export import PROMPTS, TINY, _write, assert_judge_alike, hf_dir  # noqa: F401
from tests.test_lora_training import _adam_moments

# Labels 0 and 2 have two surface tokens; label 1 repeats its one id as (masked) padding.
LABELS = np.array([[9, 5], [6, 6], [40, 41]], np.int32)
SYNONYMS = np.array([[True, True], [True, False], [True, True]])
HEAD = [5, 6, 9, 40, 41]  # the distinct label ids, sorted: the trained columns
OTHERS = np.setdiff1d(np.arange(VOCAB), HEAD)
ONE_DEVICE = {"data": 1, "fsdp": 1, "tensor": 1}


def _config(head_rows: str, **overrides) -> Config:
    """The tiny production config; KL + CE without the adversary, for short compiles."""
    objective = ObjectiveConfig(adversarial=AdversarialConfig(epsilon=0.0))
    config = tiny_config(objective=objective, **overrides)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, head_rows=head_rows))


def _production(head_rows: str, mesh_shape=ONE_DEVICE, labels=LABELS, synonyms=SYNONYMS):
    config = _config(head_rows)
    mesh = make_mesh(mesh_shape, jax.devices()[: math.prod(mesh_shape.values())])
    optimizer = make_optimizer(config.optimizer, 10)
    model_state = build_model_state(config, VOCAB, SEQ_LEN, mesh, optimizer, label_token_ids=labels)
    loss_fn = judge_loss(config.objective, model_state.layout.step_label_ids(labels), synonyms)
    return mesh, model_state, loss_fn, build_steps(model_state, optimizer, loss_fn, mesh)


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def test_state_holds_only_the_label_columns_of_the_head():
    """Parameters and Adam moments hold a [D, n] head; the whole [D, V] kernel is only read
    for the merge. Counted by hand from the tiny model's dims (tests.production)."""
    d, ff, layers, heads, kv, v, n = 32, 64, 2, 4, 2, VOCAB, len(HEAD)
    hd = d // heads
    per_layer = d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * ff + 2 * d
    whole = v * d + layers * per_layer + d + d * v
    trained = whole - d * v + d * n
    assert (whole, trained) == (22_688, 20_800)

    _, model_state, _, _ = _production("labels")
    layout = model_state.layout
    assert layout.head_ids.tolist() == HEAD
    params = layout.abstract_state.params
    assert params["lm_head"]["kernel"].shape == (d, n)
    assert _count(params) == trained and _count(layout.abstract_base) == whole
    for moment in _adam_moments(layout.abstract_state.opt_state):
        chex.assert_trees_all_equal_shapes_and_dtypes(moment, params)
    flat = jax.tree_util.tree_flatten_with_path(layout.abstract_state)[0]
    heads_in_state = [x.shape for path, x in flat if "lm_head" in jax.tree_util.keystr(path)]
    assert heads_in_state == [(d, n)] * 3  # params, mu, nu: nothing [D, V]
    leaves = [x for _, x in flat if x.shape]
    assert sum(math.prod(x.shape) for x in leaves) == 3 * trained  # params, mu, nu
    assert model_state.frozen is None  # the steps never read the whole kernel: not held
    assert model_state.merge_base().shape == (d, v)  # read for the merge only
    assert layout.merged_model.config.head_columns is None
    assert layout.checkpoint_metadata() == {"head_token_ids": HEAD}


@pytest.mark.parametrize("change", ["lora", "tied", "all", "no labels"])
def test_the_option_has_no_effect_without_an_untied_fully_trained_head(change):
    config = _config("all" if change == "all" else "labels")
    if change == "lora":
        config = dataclasses.replace(config, lora=LoraConfig(rank=4))
    if change == "tied":
        model = dataclasses.replace(config.model, tie_embeddings=True)
        config = dataclasses.replace(config, model=model)
    mesh = make_mesh(ONE_DEVICE, jax.devices()[:1])
    optimizer = make_optimizer(config.optimizer, 10)
    labels = None if change == "no labels" else LABELS
    layout = state_layout(config, VOCAB, SEQ_LEN, mesh, optimizer, labels)
    assert layout.head_ids is None and layout.checkpoint_metadata() == {}
    assert layout.step_label_ids(LABELS) is LABELS


@pytest.fixture(scope="module")
def runs() -> dict:
    """Three production steps of "all" and "labels" from the same seed, on one device."""
    out = {}
    for rows in ("all", "labels"):
        mesh, model_state, loss_fn, steps = _production(rows)
        state = model_state.init_state(jax.random.key(0))
        run = {"model_state": model_state, "loss_fn": loss_fn, "losses": []}
        run["start"] = jax.device_get(model_state.model_params(state.params))
        run["state"] = state  # step 0 (a copy is donated below)
        state = jax.tree.map(lambda x: x.copy(), state)
        for step in range(3):
            batch = global_batch(random_batch(seed=step), mesh)
            state, metrics = steps.train(state, batch, jax.random.key(step), model_state.frozen)
            run["losses"].append(float(metrics["loss"]))
        run["end"] = jax.device_get(model_state.model_params(state.params))
        out[rows] = run
    return out


def _without_head(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k != "lm_head"}


def test_label_columns_get_the_columns_of_the_whole_kernels_gradient(runs):
    """At step 0 the loss is the "all" run's, and the label columns' gradient is those
    columns of the whole kernel's (plain jax.grad over the full model, the label tokens' own
    ids), where every other column's gradient is exactly zero."""
    full, labels = runs["all"], runs["labels"]
    chex.assert_trees_all_equal(labels["start"], full["start"])  # the same weights
    batch = random_batch(0)
    reference = judge_loss(_config("all").objective, LABELS, SYNONYMS)
    model = full["model_state"].model

    @jax.jit
    def reference_grad(params):
        return jax.value_and_grad(lambda p: reference(model, p, batch)[0])(params)

    @jax.jit
    def label_grad(params):
        small = labels["model_state"].model
        return jax.value_and_grad(lambda p: labels["loss_fn"](small, p, batch)[0])(params)

    ref_loss, ref_grads = reference_grad(full["start"])
    loss, grads = label_grad(labels["state"].params)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    np.testing.assert_allclose(labels["losses"][0], full["losses"][0], rtol=1e-6)  # production
    ref_head = np.asarray(ref_grads["lm_head"]["kernel"])
    assert not ref_head[:, OTHERS].any()  # why the option is safe
    np.testing.assert_allclose(
        grads["lm_head"]["kernel"], ref_head[:, HEAD], rtol=1e-5, atol=1e-9
    )  # fmt: skip
    chex.assert_trees_all_close(
        _without_head(grads), _without_head(ref_grads), rtol=1e-5, atol=1e-9
    )  # fmt: skip


def test_no_other_column_moves_and_the_rest_tracks_the_full_run(runs):
    """After three production steps every non-label column is bit-identical to the start;
    each label column moved, and they and the rest of the model track the "all" run (which
    differs only by weight decay on the columns no judgment reads)."""
    full, labels = runs["all"], runs["labels"]
    np.testing.assert_allclose(labels["losses"], full["losses"], rtol=1e-5)
    kernel, before = labels["end"]["lm_head"]["kernel"], labels["start"]["lm_head"]["kernel"]
    np.testing.assert_array_equal(kernel[:, OTHERS], before[:, OTHERS])
    assert (np.abs(kernel[:, HEAD] - before[:, HEAD]).max(axis=0) > 1e-4).all()
    full_kernel = full["end"]["lm_head"]["kernel"]
    np.testing.assert_allclose(kernel[:, HEAD], full_kernel[:, HEAD], rtol=1e-4, atol=1e-6)
    assert np.abs(full_kernel[:, OTHERS] - before[:, OTHERS]).max() > 0  # decayed there
    chex.assert_trees_all_close(
        _without_head(labels["end"]), _without_head(full["end"]), rtol=1e-4, atol=1e-6
    )  # fmt: skip
    # A fresh build (what loading a run does) draws the same whole kernel again.
    np.testing.assert_array_equal(np.asarray(_production("labels")[1].merge_base()), before)


def test_a_label_head_shards_on_a_mesh(runs):
    """n = 5 columns do not divide the tensor axis: that axis of the [D, n] head and of its
    moments is replicated while D stays split over fsdp; the whole kernel is read into its
    own sharding, and a step gives the single-device loss."""
    mesh, model_state, _, steps = _production("labels", {"data": 1, "fsdp": 2, "tensor": 2})
    state = model_state.init_state(jax.random.key(0))
    head = state.params["lm_head"]["kernel"]
    assert head.shape == (32, len(HEAD)) and head.sharding.spec == PartitionSpec("fsdp", None)
    mu = _adam_moments(state.opt_state)[0]["lm_head"]["kernel"]
    assert mu.sharding.spec == PartitionSpec("fsdp", None)
    assert model_state.merge_base().sharding.spec == PartitionSpec("fsdp", "tensor")
    batch = global_batch(random_batch(0), mesh)
    _, metrics = steps.train(state, batch, jax.random.key(0), model_state.frozen)
    np.testing.assert_allclose(float(metrics["loss"]), runs["labels"]["losses"][0], rtol=1e-5)


def test_a_label_head_run_judges_and_exports_as_a_full_model(hf_dir, tmp_path):  # noqa: F811
    """Trained from an HF checkpoint with ``head_rows=labels``: the exported lm_head is the
    checkpoint's own, except the label tokens' rows (HF layout), which moved; the rest of the
    model trained; the run and its export judge alike."""
    rows = [
        {"id": f"r{i}", "task": "raw", "fields": {"prompt": PROMPTS[i % 3]},
         "labels": ["yes", "no"], "counts": [i % 4, 3]}
        for i in range(60)
    ]  # fmt: skip
    data, workdir = _write(tmp_path / "data.jsonl", rows), tmp_path / "run"
    argv = [
        "jdjudge.train", f"--config={TINY}:jsonl", f"--config.data.path={data}",
        f"--config.workdir={workdir}", f"--config.model.init_from={hf_dir}",
        "--config.model.head_rows=labels", "--config.steps=4", "--config.eval_every=4",
        "--config.data.max_length=32", "--config.data.tokens_per_batch=256",
        "--config.optimizer.learning_rate=0.01", "--config.optimizer.warmup_steps=1",
    ]  # fmt: skip
    assert train.main(argv) == 0
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    label_ids = sorted(tokenizer(" " + w, add_special_tokens=False)["input_ids"][0]
                       for w in ("yes", "no"))  # fmt: skip
    with RunCheckpoints(workdir, read_only=True) as checkpoints:
        recorded = {
            tuple(checkpoints.read_metadata(s)["head_token_ids"]) for s in checkpoints.steps()
        }
    assert recorded == {tuple(label_ids)}

    out = tmp_path / "hf"
    assert export.main([f"--model={workdir}", f"--output={out}", "--dtype=float32"]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    base = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager")
    head, base_head = exported.lm_head.weight.detach(), base.lm_head.weight.detach()
    others = [i for i in range(head.shape[0]) if i not in label_ids]
    assert torch.equal(head[others], base_head[others])
    assert (torch.abs(head[label_ids] - base_head[label_ids]).amax(dim=1) > 1e-4).all()
    layer = "model.layers.0.mlp.up_proj.weight"
    moved = exported.state_dict()[layer] - base.state_dict()[layer]
    assert torch.abs(moved).max() > 1e-4  # full fine-tuning: the body trained

    assert_judge_alike(tmp_path, workdir, out)
