"""``python -m jdjudge.plan --config=configs/llama.py --topology=v5e-16`` — will it fit?

Lowers and compiles the production train step (``jitted.build_steps``, with training's
shardings and donation) for a TPU slice that need not exist: the devices are libtpu's
compile-only topology, the model and state are shapes with shardings (no weights read), and
the batch is the worst case the config allows (no data or tokenizer read). Prints XLA's
per-device memory, the verdict against the chip's HBM and the step's FLOPs; ``--output``
writes the same numbers as JSON. Without libtpu installed, or with ``--topology=cpu:N``, the
same program compiles for N simulated CPU devices instead (and says so: XLA:CPU's figures
are not TPU's). Exit status 0 whether or not it fits (the answer is the output); 1 with
``--require_fit`` when it does not; 2 for bad input. See docs/scaling.md.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jdjudge.config.cli import load_config
from jdjudge.config.fields import ConfigError
from jdjudge.config.schema import Config
from jdjudge.entry import UsageError, run_cli
from jdjudge.outputs import write_text_atomic
from jdjudge.planning import topology as topo
from jdjudge.planning.memory import (
    GIB,
    MEMORY_FIELDS,
    Verdict,
    device_memory,
    out_of_memory,
    peak_bytes,
    step_flops,
    usable_hbm,
)
from jdjudge.planning.report import format_report

PROG = "jdjudge.plan"
USAGE = (
    "--config=FILE --topology=NAME [--num_slices=N] [--set KEY=VALUE ...] "
    "[--config.KEY=VALUE ...] [--labels=K] [--vocab_size=V] [--hbm=GiB] [--output=FILE] "
    "[--require_fit]"
)
_VALUED = ("topology", "num_slices", "set", "labels", "vocab_size", "hbm", "output")


@dataclass
class Args:
    topology: str = ""
    num_slices: int | None = None  # None: the config's mesh.dcn_data
    labels: int | None = None
    vocab_size: int | None = None
    hbm_gib: float | None = None
    output: str = ""
    require_fit: bool = False
    config_argv: list[str] = field(default_factory=list)  # for config.cli.load_config


def _number(flag: str, raw: str, kind: type) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise UsageError(f"--{flag}={raw}: not a valid {kind.__name__}") from None


def parse_args(argv: Sequence[str]) -> Args:
    """Plan's own flags; ``--config``/``--config.KEY`` and ``--set KEY=VALUE`` (the same
    override) are left for ``load_config``, so they mean exactly what they mean to train."""
    args, rest = Args(), list(argv[1:])
    config_argv = [argv[0] if argv else PROG]
    overrides: list[str] = []
    while rest:
        arg = rest.pop(0)
        if arg.startswith("--config"):
            config_argv.append(arg)
            continue
        if arg == "--require_fit":
            args.require_fit = True
            continue
        name, has_value, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or name not in _VALUED:
            raise UsageError(f"unknown argument {arg!r}; usage: {PROG} {USAGE}")
        if not has_value:
            if not rest:
                raise UsageError(f"--{name} needs a value")
            value = rest.pop(0)
        if name == "set":
            key, is_pair, raw = value.partition("=")
            if not is_pair or not key:
                raise UsageError(f"--set {value}: expected KEY=VALUE, e.g. model.remat=none")
            overrides.append(f"--config.{key}={raw}")
        elif name == "topology":
            args.topology = value
        elif name == "output":
            args.output = value
        elif name == "hbm":
            args.hbm_gib = _number(name, value, float)
        else:
            setattr(args, name, _number(name, value, int))
    if not args.topology:
        raise UsageError("missing --topology (e.g. v5e-16, v5e:4x4, v4-8, cpu:8)")
    if args.hbm_gib is not None and args.hbm_gib <= 0:
        raise UsageError(f"--hbm={args.hbm_gib:g}: must be > 0 (GiB per device)")
    folder = os.path.dirname(os.path.abspath(args.output)) if args.output else ""
    if args.output and (os.path.isdir(args.output) or not os.path.isdir(folder)):
        raise UsageError(f"--output={args.output}: not a file in an existing directory")
    args.config_argv = config_argv + overrides
    return args


def _with_slices(argv: list[str], num_slices: int | None) -> list[str]:
    """``--num_slices`` sets ``mesh.dcn_data`` unless the command line sets it itself."""
    if num_slices is None or any(a.startswith("--config.mesh.dcn_data=") for a in argv):
        return argv
    return [*argv, f"--config.mesh.dcn_data={num_slices}"]


def _devices(spec: topo.TopologySpec) -> tuple[list[Any], bool]:
    """The devices to compile for, and whether they are TPU devices."""
    if spec.is_tpu and topo.libtpu_available():
        return list(topo.tpu_devices(spec)), True
    return topo.cpu_devices(spec.num_devices), False


def _mesh(config: Config, devices: list[Any], tpu: bool) -> Any:
    """Training's mesh (``sharding.make_mesh``). Simulated CPU devices share one process,
    so there a multi-slice mesh is built flat: the data axis spans all slices, every array
    is split the same way, and only the slices' device order (no memory) differs."""
    from jdjudge.sharding import make_mesh

    shape, dcn = config.mesh.shape(), config.mesh.dcn_data
    if dcn > 1 and not tpu:
        shape, dcn = {**shape, "data": shape["data"] * dcn if shape["data"] > 0 else -1}, 1
    try:
        return make_mesh(shape, devices=devices, dcn_data=dcn)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _vocab_size(config: Config, override: int | None) -> int:
    if override is not None:
        return override
    if config.model.init_from:
        return 0  # from the checkpoint's config.json
    if config.data.name == "synthetic" and not config.data.tokenizer:
        from jdjudge.data.tokenizer import synthetic_tokenizer

        return len(synthetic_tokenizer())
    raise UsageError("the vocabulary comes from a tokenizer a plan does not build: pass "
                     "--vocab_size=V")  # fmt: skip


def plan(args: Args) -> dict[str, Any]:
    """Compile the train step per ``args`` and return the report (``planning.report``)."""
    from jdjudge.planning import abstract_batch as ab
    from jdjudge.planning import step as planned

    config = load_config(_with_slices(args.config_argv, args.num_slices))
    try:
        slices = config.mesh.dcn_data if args.num_slices is None else args.num_slices
        spec = topo.parse_topology(args.topology, slices)
        k, labels_source = ab.num_labels(config, args.labels)
        hf_config, source = (None, "the model.* keys")
        if config.model.init_from:
            hf_config, source = planned.hf_config_for(config.model.init_from)
    except ValueError as error:
        raise UsageError(str(error)) from None
    vocab = _vocab_size(config, args.vocab_size)
    devices, tpu = _devices(spec)
    config = planned.planned_config(config, tpu)
    mesh = _mesh(config, devices, tpu)
    processes = topo.hosts(devices) if tpu else spec.hosts  # the real run's processes
    batch = ab.abstract_batch(config, mesh, k, processes)
    try:
        step = planned.lower_train_step(config, mesh, batch, k, vocab, hf_config)
    except ValueError as error:  # the model's config refused (hf_config, decoder checks)
        raise UsageError(f"cannot build the train step: {error}") from None
    target = spec.name if tpu else f"cpu:{spec.num_devices}"
    target += f" × {spec.num_slices} slices" if tpu and spec.num_slices > 1 else ""
    count = f"{len(devices)} device{'s' if len(devices) > 1 else ''}"
    print(f"{PROG}: compiling the train step for {target} ({count}); "
          "this can take minutes", file=sys.stderr, flush=True)  # fmt: skip
    started = time.perf_counter()
    compiled, refused = _compile(step.lowered)
    seconds = time.perf_counter() - started
    usable = usable_hbm(devices[0]) if tpu else None
    if args.hbm_gib is not None:
        capacity = int(args.hbm_gib * GIB)
    else:
        capacity = (refused[1] if refused else usable) or spec.hbm_bytes
    if compiled is not None:
        memory: dict[str, int | None] = dict(device_memory(compiled).as_dict())
        flops, peak = step_flops(compiled), peak_bytes(compiled)
    else:  # XLA's refusal names only the total
        memory = {name: None for name in MEMORY_FIELDS}
        memory["total"], flops, peak = refused[0], None, None
    verdict = Verdict(int(memory["total"] or 0), capacity)
    return {
        "topology": spec.name,
        "num_slices": spec.num_slices,
        "compiled_for": "tpu" if tpu else "cpu",
        "device_kind": devices[0].device_kind,
        "devices": len(devices),
        "hosts": processes,
        "mesh": {name: int(size) for name, size in mesh.shape.items()},
        "model": {
            "architecture": source,
            "parameters": step.parameters,
            "trainable": step.trainable,
            "lora_rank": config.lora.rank,
            "param_dtype": config.model.param_dtype,
            "remat": config.model.remat,
            "attention": config.model.attention,
        },
        "batch": {
            "layout": "packed" if config.data.packing else "padded",
            **ab.batch_summary(batch, config.data.packing),
            "labels": k,
            "labels_from": labels_source,
        },
        "memory_per_device": memory,
        "xla_out_of_memory": refused is not None,
        "xla_peak_bytes": peak,
        "hbm_per_device": spec.hbm_bytes,
        "hbm_usable": refused[1] if refused else usable,
        **verdict.as_dict(),
        "verdict": verdict.line(),
        "model_flops": step.model_flops(batch["tokens"].shape[0], batch["tokens"].shape[1]),
        "flops_per_device": flops,
        "flops_global": None if flops is None else flops * len(devices),
        "compile_seconds": round(seconds, 1),
    }


def _compile(lowered: Any) -> tuple[Any, tuple[int, int] | None]:
    """(compiled, None), or (None, (bytes needed, bytes available)) when XLA:TPU refuses
    the program for want of memory: a plan's answer, not an error."""
    try:
        return lowered.compile(), None
    except Exception as error:  # jax.errors.JaxRuntimeError
        refused = out_of_memory(str(error))
        if refused is None:
            raise
        return None, refused


def main(argv: Sequence[str] | None = None) -> int:
    """``argv`` includes the program name (as ``sys.argv`` does)."""
    arguments = list(sys.argv if argv is None else argv)

    def plan_and_report() -> int:
        if any(a in ("-h", "--help") for a in arguments[1:]):
            print(f"usage: python -m {PROG} {USAGE}\n\n{__doc__.strip()}")
            return 0
        args = parse_args(arguments)
        report = plan(args)
        print(format_report(report), flush=True)
        if args.output:  # whole or not at all, as every jdjudge output
            write_text_atomic(args.output, json.dumps(report, indent=2) + "\n")
        return 1 if args.require_fit and report["fits"] is False else 0

    return run_cli(PROG, plan_and_report)


if __name__ == "__main__":
    sys.exit(main())
