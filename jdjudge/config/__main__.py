"""``python -m jdjudge.config --doc`` regenerates docs/configuration.md from the schema;
``--check`` exits 1 when the page is stale (what CI's test does)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from jdjudge.config.reference import PAGE, is_current, render


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jdjudge.config", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--doc", action="store_true", help=f"rewrite {PAGE}")
    group.add_argument("--check", action="store_true", help=f"exit 1 if {PAGE} is stale")
    parser.add_argument("--output", type=Path, default=PAGE, help="page to write or check")
    args = parser.parse_args(argv)
    if args.check:
        if is_current(args.output):
            return 0
        print(f"jdjudge.config: {args.output} is stale; run python -m jdjudge.config --doc")
        return 1
    args.output.write_text(render(), encoding="utf-8")
    print(f"jdjudge.config: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
