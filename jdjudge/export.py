"""``python -m jdjudge.export --model=<run> --output=<dir> [--peft_output=<dir>]``

Writes a Hugging Face model directory (config.json, safetensors, tokenizer files) with any
LoRA adapters merged, which ``transformers.AutoModelForCausalLM`` loads as it is; for LoRA
runs ``--peft_output`` also writes a PEFT adapter (adapter_config.json +
adapter_model.safetensors) for the run's base model (``model.init_from``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from jdjudge.loading import is_run, load_run
from jdjudge.models.hf_export import export_hf
from jdjudge.models.peft_export import export_peft_adapter

PROG = "jdjudge.export"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    parser.add_argument("--model", required=True, help="a jdjudge workdir or checkpoint step")
    parser.add_argument("--output", required=True, type=Path, help="HF directory to write")
    parser.add_argument("--peft_output", type=Path, default=None, help="PEFT adapter directory")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--max_shard_size", default="5GB")
    args = parser.parse_args(argv)
    if not is_run(args.model):
        parser.error(f"--model={args.model}: not a jdjudge workdir or checkpoint step")
    for path in (args.output, args.peft_output):
        if path is not None and path.exists() and any(path.iterdir()):
            parser.error(f"{path} exists and is not empty")
    judge = load_run(args.model)
    if args.peft_output is not None and judge.lora is None:
        parser.error("--peft_output needs a LoRA run (lora.rank > 0)")
    export_hf(
        judge.params, judge.decoder, args.output, tokenizer=judge.tokenizer,
        model_type=judge.model_type, dtype=args.dtype, max_shard_size=args.max_shard_size,
    )  # fmt: skip
    print(f"{PROG}: {judge.model_type} model with merged weights -> {args.output}")
    if args.peft_output is not None:
        base = judge.config.model.init_from or None
        export_peft_adapter(judge.adapters, judge.lora, base, args.peft_output, dtype=args.dtype)
        print(f"{PROG}: PEFT adapter for base {base or '(random init)'} -> {args.peft_output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
