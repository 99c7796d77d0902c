"""``python -m jdjudge.export --model=<run> --output=<dir> [--peft_output=<dir>]``

Writes a Hugging Face model directory (config.json, safetensors, tokenizer files) with any
LoRA adapters merged, which ``transformers.AutoModelForCausalLM`` loads as it is; for LoRA
runs ``--peft_output`` also writes a PEFT adapter (adapter_config.json +
adapter_model.safetensors) for the run's base model (``model.init_from``).

Everything is checked before anything is written, and each directory is written under a
temporary name beside it and renamed when complete, so a failure leaves no output behind
and a rerun is never refused for a half-written one.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from jdjudge.entry import UsageError, run_cli
from jdjudge.loading import is_run, load_run
from jdjudge.models.hf_export import export_hf
from jdjudge.models.peft_export import EXPORT_DTYPES, export_peft_adapter
from jdjudge.outputs import atomic_dir, check_new_dir

PROG = "jdjudge.export"
MODEL_DTYPES = ("float32", "bfloat16", "float16")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, lambda: _export(argv))


def _export(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    parser.add_argument("--model", required=True, help="a jdjudge workdir or checkpoint step")
    parser.add_argument("--output", required=True, type=Path, help="HF directory to write")
    parser.add_argument("--peft_output", type=Path, default=None, help="PEFT adapter directory")
    parser.add_argument("--checkpoint", default=None,
                        help="best (default, lowest eval KL), latest or a step number")  # fmt: skip
    parser.add_argument("--dtype", default="bfloat16", choices=MODEL_DTYPES,
                        help="dtype of the merged model's weights")  # fmt: skip
    parser.add_argument("--peft_dtype", default="float32", choices=tuple(EXPORT_DTYPES),
                        help="dtype of the PEFT adapter (small: float32 keeps it exact)")  # fmt: skip
    parser.add_argument("--max_shard_size", default="5GB")
    args = parser.parse_args(argv)
    if not is_run(args.model):
        raise UsageError(f"--model={args.model}: not a jdjudge workdir or checkpoint step")
    outputs = {"--output": args.output, "--peft_output": args.peft_output}
    for flag, path in outputs.items():
        if path is not None:
            check_new_dir(path, flag)
    if args.peft_output is not None and args.peft_output.resolve() == args.output.resolve():
        raise UsageError("--peft_output: must differ from --output")
    judge = load_run(args.model, args.checkpoint)
    print(f"{PROG}: {args.model}: {judge.describe()}", file=sys.stderr)
    if args.peft_output is not None and judge.lora is None:
        raise UsageError("--peft_output: needs a LoRA run (lora.rank > 0)")
    with contextlib.ExitStack() as stack:  # both directories appear, or neither
        merged = stack.enter_context(atomic_dir(args.output))
        export_hf(
            judge.params, judge.decoder, merged, tokenizer=judge.tokenizer,
            model_type=judge.model_type, dtype=args.dtype, max_shard_size=args.max_shard_size,
        )  # fmt: skip
        if args.peft_output is not None:
            base = judge.config.model.init_from or None
            adapter = stack.enter_context(atomic_dir(args.peft_output))
            export_peft_adapter(judge.adapters, judge.lora, base, adapter, dtype=args.peft_dtype)
    print(f"{PROG}: {judge.model_type} model with merged weights -> {args.output}")
    if args.peft_output is not None:
        print(f"{PROG}: PEFT adapter for base {base or '(random init)'} -> {args.peft_output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
