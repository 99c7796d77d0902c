"""Semantic checks on a resolved config, run before any work or any file is written.

Each problem is one line naming the key, so a user fixes them all in one go.
"""

from __future__ import annotations

import os

from ml_collections import ConfigDict

BALLS = ("l2", "l1", "linf")
SOLVERS = ("pgd", "worst_case")
MODEL_FAMILIES = ("llama",)
DTYPES = ("float32", "bfloat16", "float16")
SCHEDULES = ("cosine", "linear", "constant")
NAN_GUARDS = ("skip", "stop")
REMAT = ("none", "full", "dots", "dots_no_batch")
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _check(errors: list[str], ok: bool, key: str, message: str, value: object) -> None:
    if not ok:
        errors.append(f"{key}={value!r}: {message}")


def _positive_int(errors: list[str], config: ConfigDict, key: str) -> None:
    value = _get(config, key)
    _check(errors, isinstance(value, int) and value >= 1, key, "must be an integer >= 1", value)


def _get(config: ConfigDict, dotted: str) -> object:
    node: object = config
    for part in dotted.split("."):
        node = node[part]  # type: ignore[index]
    return node


def validate_config(config: ConfigDict) -> list[str]:
    """All problems found in ``config`` (empty when it is runnable)."""
    errors: list[str] = []
    for key in (
        "steps",
        "batch_size",
        "eval_batch_size",
        "eval_every",
        "log_every",
        "checkpoint_every",
        "checkpoint.keep",
    ):
        _positive_int(errors, config, key)
    _check(
        errors,
        config.nan_guard in NAN_GUARDS,
        "nan_guard",
        f"one of {NAN_GUARDS}",
        config.nan_guard,
    )
    _check(errors, isinstance(config.seed, int), "seed", "must be an integer", config.seed)
    _check(errors, config.epochs >= 0, "epochs", "must be >= 0 (0: use steps)", config.epochs)
    workdir = config.workdir
    _check(errors, bool(workdir), "workdir", "must be a directory path", workdir)
    if workdir and os.path.exists(workdir):
        _check(errors, os.path.isdir(workdir), "workdir", "exists and is not a directory", workdir)

    _validate_objective(errors, config.objective)
    _validate_lora(errors, config.lora)
    _validate_model(errors, config.model)
    _validate_optimizer(errors, config.optimizer)
    data = config.data
    for key in (
        "data.num_items",
        "data.num_annotators",
        "data.max_length",
        "data.tokens_per_batch",
    ):
        _positive_int(errors, config, key)
    for key in ("test_fraction", "validation_fraction"):
        value = data[key]
        _check(errors, 0.0 < value < 1.0, f"data.{key}", "must be in (0, 1)", value)
    _check(
        errors, data.subsample >= 0, "data.subsample", "must be >= 0 (0 keeps all)", data.subsample
    )
    if data.name != "synthetic" and not data.path:
        errors.append(f"data.path='': required for dataset {data.name!r} (a file or folder)")
    return errors


def _validate_objective(errors: list[str], objective: ConfigDict) -> None:
    alpha = objective.alpha
    _check(errors, 0.0 <= alpha <= 1.0, "objective.alpha", "must be in [0, 1]", alpha)
    adv = objective.adversarial
    _check(errors, adv.epsilon >= 0, "objective.adversarial.epsilon", "must be >= 0", adv.epsilon)
    _check(errors, adv.steps >= 0, "objective.adversarial.steps", "must be >= 0", adv.steps)
    if adv.epsilon > 0:
        _check(
            errors,
            adv.step_size > 0,
            "objective.adversarial.step_size",
            "must be > 0 when epsilon > 0",
            adv.step_size,
        )
        _check(
            errors,
            adv.steps >= 1,
            "objective.adversarial.steps",
            "must be >= 1 when epsilon > 0",
            adv.steps,
        )
    _check(errors, adv.ball in BALLS, "objective.adversarial.ball", f"one of {BALLS}", adv.ball)
    _check(
        errors,
        adv.solver in SOLVERS,
        "objective.adversarial.solver",
        f"one of {SOLVERS}",
        adv.solver,
    )


def _validate_model(errors: list[str], model: ConfigDict) -> None:
    _check(
        errors,
        model.family in MODEL_FAMILIES,
        "model.family",
        f"unknown model family; supported: {MODEL_FAMILIES}",
        model.family,
    )
    for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
        value = model[key]
        _check(errors, isinstance(value, int) and value >= 1, f"model.{key}", "must be >= 1", value)
    if model.num_heads >= 1 and model.num_kv_heads >= 1:
        _check(
            errors,
            model.num_heads % model.num_kv_heads == 0,
            "model.num_kv_heads",
            f"must divide model.num_heads={model.num_heads}",
            model.num_kv_heads,
        )
    for key in ("dtype", "param_dtype"):
        _check(errors, model[key] in DTYPES, f"model.{key}", f"one of {DTYPES}", model[key])
    _check(errors, model.remat in REMAT, "model.remat", f"one of {REMAT}", model.remat)


def _validate_optimizer(errors: list[str], opt: ConfigDict) -> None:
    _check(
        errors, opt.learning_rate > 0, "optimizer.learning_rate", "must be > 0", opt.learning_rate
    )
    _check(
        errors, opt.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0", opt.warmup_steps
    )
    _check(
        errors, opt.schedule in SCHEDULES, "optimizer.schedule", f"one of {SCHEDULES}", opt.schedule
    )
    _check(
        errors,
        0.0 <= opt.end_lr_factor <= 1.0,
        "optimizer.end_lr_factor",
        "must be in [0, 1]",
        opt.end_lr_factor,
    )
    _check(
        errors, opt.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0", opt.weight_decay
    )
    _check(
        errors,
        opt.grad_clip_norm >= 0,
        "optimizer.grad_clip_norm",
        "must be >= 0 (0 disables clipping)",
        opt.grad_clip_norm,
    )


def _validate_lora(errors: list[str], lora: ConfigDict) -> None:
    rank = lora.rank
    _check(errors, isinstance(rank, int) and rank >= 0, "lora.rank", "must be >= 0 (0: full)", rank)
    if rank:
        _check(errors, lora.alpha > 0, "lora.alpha", "must be > 0", lora.alpha)
        _check(errors, 0 <= lora.dropout < 1, "lora.dropout", "must be in [0, 1)", lora.dropout)
        unknown = [m for m in lora.target_modules if m not in LORA_MODULES]
        _check(errors, not unknown and len(lora.target_modules) > 0, "lora.target_modules",
               f"choose from {LORA_MODULES}", tuple(lora.target_modules))  # fmt: skip
