"""Step time of jdjudge's production train step against a PyTorch peer, in one run on one
machine, on the same items, weights and objective.

    python benchmarks/step_time.py --quick                  # one small case, < 5 min on 2 CPUs
    python benchmarks/step_time.py [--sizes 256x4 512x8] [--datasets chaosnli_snli summeval
        mtbench] [--modes full lora] [--layouts padded packed] [--steps 20] [--warmup 3]
        [--batch-size N] [--tokens-per-batch 4096] [--torch-threads N]
        [--peer-malloc same|default] [--adversarial first|all|none] [--no-memory]
        [--no-flops] [--workdir DIR]

Per case, each in its own process (so peak RSS is per side): ``prepare`` builds jdjudge's data,
batches and starting weights, exports the weights with the project's exporters (HF checkpoint,
PEFT adapter) and the steps' items, and computes the peer's loss on the first batch; ``jdjudge``
checks that its first step's loss matches it (1e-4) before timing any step, then runs the
production step (``benchmarks/step_time_jdjudge.py``); ``peer`` loads the exported weights
into transformers' ``LlamaForCausalLM`` (+ peft), checks its first loss too, and trains on the
same items (``benchmarks/torch_peer.py``); with ``--adversarial``, ``adversarial`` runs ε = 0
and ε = 0.25 (pgd, worst_case) interleaved step by step on the same batches, in one process
(``benchmarks/step_time_adversarial.py``: paired overhead, FLOPs ratio). Then, for the first
case of each size, the compiled memory of the step with the label head vs a full-vocabulary
head, and LoRA's compiled FLOPs against full fine-tuning's (``benchmarks/lora_cost.py``).

Fairness: both sides run the same step sequence, from the same weights, with the same
objective, optimizer, clipping and learning-rate schedule. Timed are the steps after
``--warmup`` whose jdjudge batch shape was seen before (no compilation): the same steps on both
sides. A step's time runs from the call to the updated state being ready; batches are built
before the clock starts on both sides. Real tokens are the items' own tokens, identical on both
sides, so the tokens/s ratio is the inverse ratio of the summed step times. A padded jdjudge
batch holds ``batch_size`` items (padded to a bucket width, as training does); a packed one
about ``data.tokens_per_batch`` tokens of items, and the peer then gets exactly those items,
left-padded to their longest (what a user does with a list of items). Peak RSS is VmHWM, the
whole process and ("from") restarted after the data is loaded. Each framework uses the
machine's cores its own way (XLA's pool; torch's OpenMP threads, ``--torch-threads``); on a
busy machine torch's OpenMP barriers suffer most, so take figures on a quiet one. jdjudge
keeps freed host memory for reuse as training does (``host_malloc``,
``jdjudge/host_memory.py``); the peer process gets the same glibc setting unless
``--peer-malloc default``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.step_figures import (  # noqa: E402
    adversarial_lines,
    load_line,
    peak_rss_mib,
    reset_peak_rss,
    side_line,
    stats,
)
from jdjudge import host_memory  # noqa: E402 (the checkout on the path first)

SIZES = {"256x4": (256, 4), "512x8": (512, 8)}
TOLERANCE = 1e-4
TORCH_THREADS = "STEP_TIME_TORCH_THREADS"  # --torch-threads, passed to the peer process
PEER_MALLOC = "STEP_TIME_PEER_MALLOC"  # --peer-malloc, passed to the peer process


# --- child processes -------------------------------------------------------------------------


def child_prepare(case: Any, workdir: Path) -> dict[str, Any]:
    from benchmarks import step_time_jdjudge as jd
    from benchmarks.torch_peer import OptimizerSettings

    built = jd.build_data(case)
    trainer = jd.trainer_for(built)
    state, _ = jd.initial_state(trainer, built.config)
    paths = jd.export_weights(trainer, state, built.config, workdir)
    jd.save_peer_batches(built, workdir / "batches.npz")
    del state
    config = built.config
    meta = {
        **paths,
        "alpha": config.objective.alpha,
        "optimizer": dataclasses.asdict(OptimizerSettings.of(config.optimizer)),
        "total_steps": config.steps,
        "timed": built.plan.timed,
        "real_tokens": built.plan.real_tokens(),
        "computed_tokens": built.plan.computed_tokens(),
        "attention": getattr(config.model, "attention", "n/a"),
        "head_rows": getattr(config.model, "head_rows", "n/a"),
        "has_truth": built.data.has_truth,
        "host_malloc_kept": host_memory.configure(config.host_malloc),
    }
    batches = _peer_batches(workdir)
    peer = _peer(meta, workdir)
    import torch

    with torch.no_grad():
        meta["peer_loss0"] = float(peer.loss(batches[0]))
    return meta


def child_jdjudge(case: Any, workdir: Path) -> dict[str, Any]:
    from benchmarks import step_time_jdjudge as jd

    meta = json.loads((workdir / "prepare.json").read_text())
    built = jd.build_data(case)
    if built.plan.timed != meta["timed"] or built.plan.real_tokens() != meta["real_tokens"]:
        raise SystemExit("step_time: the jdjudge process planned other batches than prepare")
    baseline = reset_peak_rss()
    trainer = jd.trainer_for(built)
    check = meta["peer_loss0"] if case.epsilon == 0 else None  # the adversary: other loss
    out = jd.time_steps(built, trainer, check, TOLERANCE)
    return {**out, "peak_rss_mib": peak_rss_mib(), "baseline_rss_mib": baseline}


def child_adversarial(case: Any, workdir: Path) -> dict[str, Any]:
    from benchmarks.step_time_adversarial import time_interleaved

    meta = json.loads((workdir / "prepare.json").read_text())
    out = time_interleaved(case)
    if out["timed"] != meta["timed"] or out["real_tokens"] != meta["real_tokens"]:
        raise SystemExit("step_time: the adversarial process planned other batches than prepare")
    return {**out, "peak_rss_mib": peak_rss_mib()}


def _peer_batches(workdir: Path) -> list[Any]:
    """Every step's peer batch (the step's items, left-padded), built before timing."""
    from benchmarks import torch_peer

    stored = np.load(workdir / "batches.npz")
    flat, items, steps = stored["flat"], stored["item_offsets"], stored["step_offsets"]
    sequences = [flat[items[i] : items[i + 1]] for i in range(len(items) - 1)]
    return [
        torch_peer.left_pad(sequences[lo:hi], stored["targets"][lo:hi], int(stored["pad_id"]))
        for lo, hi in itertools.pairwise(steps)
    ]


def _peer(meta: dict[str, Any], workdir: Path) -> Any:
    """The peer: the exported weights in transformers (+ peft), its optimizer and objective."""
    from benchmarks import torch_peer

    stored = np.load(workdir / "batches.npz")
    model = torch_peer.load_model(meta["hf"], meta.get("adapter"))
    settings = torch_peer.OptimizerSettings.of(meta["optimizer"])
    return torch_peer.Peer(model, stored["label_ids"], stored["synonym_mask"], meta["alpha"],
                           settings, meta["total_steps"])  # fmt: skip


def child_peer(case: Any, workdir: Path) -> dict[str, Any]:
    meta = json.loads((workdir / "prepare.json").read_text())
    same = meta["host_malloc_kept"] and os.environ.get(PEER_MALLOC, "same") == "same"
    kept = same and host_memory.keep_freed_memory()  # before torch starts its threads
    import torch

    if os.environ.get(TORCH_THREADS):
        torch.set_num_threads(int(os.environ[TORCH_THREADS]))
    reference = json.loads((workdir / "jdjudge.json").read_text())["losses"][0]
    batches = _peer_batches(workdir)
    baseline = reset_peak_rss()
    peer = _peer(meta, workdir)
    times, losses = [], []
    for step, batch in enumerate(batches):
        started = time.perf_counter()
        loss = peer.train_step(batch, step)
        times.append(time.perf_counter() - started)
        losses.append(loss)
        if step == 0 and not abs(loss - reference) <= TOLERANCE:
            raise SystemExit(f"step_time: LOSS MISMATCH: peer {loss:.7f}, jdjudge {reference:.7f}")
    return {
        "times": times, "losses": losses, "peak_rss_mib": peak_rss_mib(),
        "baseline_rss_mib": baseline, "threads": torch.get_num_threads(), "fused": peer.fused,
        "host_malloc_kept": kept,
        "computed_tokens": [int(b.input_ids.numel()) for b in batches],
    }  # fmt: skip


def child_memory(case: Any, workdir: Path) -> dict[str, Any]:
    from benchmarks import step_time_jdjudge as jd

    return jd.head_memory(case)


def child_flops(case: Any, workdir: Path) -> dict[str, Any]:
    from benchmarks import step_time_jdjudge as jd

    return jd.lora_flops(case, tokens=256, rows=8)


ROLES = {"prepare": child_prepare, "jdjudge": child_jdjudge, "peer": child_peer,
         "adversarial": child_adversarial, "memory": child_memory,
         "flops": child_flops}  # fmt: skip


def run_child(role: str, case: Any, workdir: Path, out_name: str | None = None) -> dict:
    """Run one role in a fresh process; its result is ``workdir/<out_name>.json``."""
    name = out_name or role
    command = [sys.executable, str(Path(__file__).resolve()), "--role", role,
               "--case", case.to_json(), "--workdir", str(workdir), "--out", name]  # fmt: skip
    started = time.perf_counter()
    code = subprocess.run(command, check=False).returncode
    print(f"  [{name} process: {time.perf_counter() - started:.0f} s]", flush=True)
    if code != 0:
        raise SystemExit(f"step_time: the {role} process of case '{case.name}' failed "
                         f"(exit status {code}); see its message above")  # fmt: skip
    return json.loads((workdir / f"{name}.json").read_text())


def measure_case(case: Any, workdir: Path, adversarial: bool) -> dict[str, Any]:
    """prepare -> jdjudge (loss checked before timing) -> peer -> ε = 0 against the
    adversarial solvers, interleaved in one process (``step_time_adversarial``)."""
    before = load_line("before")
    print(f"\n== {case.name}\n{before}", flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    meta = run_child("prepare", case, workdir)
    jd = run_child("jdjudge", case, workdir)
    peer = run_child("peer", case, workdir)
    adv = run_child("adversarial", case, workdir) if adversarial else None
    after = load_line("after")
    sj, sp = stats(jd, meta), stats(peer, meta)
    timed = np.array(meta["timed"])
    real = np.array(meta["real_tokens"])
    pad_j = real.sum() / np.sum(meta["computed_tokens"])
    pad_p = real.sum() / np.sum(peer["computed_tokens"])
    drift = float(np.max(np.abs(np.array(jd["losses"]) - np.array(peer["losses"]))))
    compile_first = jd["compile_s"][0]
    print(f"attention {meta['attention']}, head_rows {meta['head_rows']}; {len(timed)} steps run"
          f", {int(timed.sum())} timed; {np.mean(real):.0f} real tokens/step; peer: "
          f"{peer['threads']} torch threads, AdamW fused={peer['fused']}; freed host memory "
          f"kept (host_malloc): jdjudge {meta['host_malloc_kept']}, peer "
          f"{peer['host_malloc_kept']}")  # fmt: skip
    print(f"loss at the first batch: jdjudge {jd['losses'][0]:.6f}, peer {meta['peer_loss0']:.6f}"
          f"; max |loss diff| over all {len(timed)} steps {drift:.2e}; jdjudge non-finite "
          f"steps {jd['finite'].count(False)}")  # fmt: skip
    print(f"  {'side':8} {'median ms':>9} {'IQR ms':>8} {'min-max ms':>17} {'real tok/s':>9}  "
          f"{'peak RSS MiB':20} notes")  # fmt: skip
    print(side_line("jdjudge", sj, jd, f"compile {compile_first:.1f} s (first shape), "
                    f"{sum(jd['compile_s']):.1f} s in {np.count_nonzero(jd['compile_s'])} steps; "
                    f"real/computed {pad_j:.2f}"))  # fmt: skip
    print(side_line("peer", sp, peer, f"real/computed {pad_p:.2f}"))
    result = {"case": case.name, "jdjudge": sj, "peer": sp, "ratio": sj["tok_s"] / sp["tok_s"],
              "compile_s": compile_first, "rss": [jd["peak_rss_mib"], peer["peak_rss_mib"]],
              "drift": drift, "adversarial": {}, "load": [before, after]}  # fmt: skip
    if adv is not None:
        print(adversarial_lines(adv, meta, result))
    print(f"jdjudge / peer real tokens/s = {result['ratio']:.3f}\n{after}", flush=True)
    return result


def print_summary(results: list[dict]) -> None:
    print(
        "\n| case | jdjudge ms (IQR) | peer ms (IQR) | jdjudge tok/s | peer tok/s | "
        "jdjudge/peer | peak RSS MiB j / p | compile s | adversarial overhead |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        j, p = r["jdjudge"], r["peer"]
        adv = ", ".join(f"{k} {v:.3f}" for k, v in r["adversarial"].items()) or "-"
        print(f"| {r['case']} | {j['median_ms']:.0f} ({j['iqr_ms']:.0f}) | {p['median_ms']:.0f} "
              f"({p['iqr_ms']:.0f}) | {j['tok_s']:.0f} | {p['tok_s']:.0f} | {r['ratio']:.3f} | "
              f"{r['rss'][0]:.0f} / {r['rss'][1]:.0f} | {r['compile_s']:.1f} | {adv} |"
              )  # fmt: skip


def print_extras(memory: list[dict], flops: list[dict]) -> None:
    for m in memory:
        label, full = m["label_head"], m["full_vocab_head"]
        print(f"compiled memory, {m['case']}, batch {tuple(m['batch'])}: label head "
              f"(head_rows={m['head_rows']}) temp {label['temp_mib']:.0f} + args "
              f"{label['argument_mib']:.0f} MiB; full-vocabulary head ([B, L, V] logits, "
              f"head_rows=all) temp {full['temp_mib']:.0f} + args {full['argument_mib']:.0f} "
              f"MiB; ratio {full['total_mib'] / label['total_mib']:.2f}")  # fmt: skip
    for f in flops:
        full, lora = f["rows"]
        print(f"compiled FLOPs, {f['case']} at vocab 128256, batch {f['batch'][0]} x "
              f"{f['batch'][1]}: full FT {full['gflop']:.1f} GFLOP, LoRA {lora['gflop']:.1f} "
              f"GFLOP; lora_flops_vs_full={f['lora_flops_vs_full']:.3f}")  # fmt: skip


def cases(args: argparse.Namespace) -> list[Any]:
    from benchmarks.step_time_jdjudge import Case

    common = {"steps": args.steps, "warmup": args.warmup, "tokens_per_batch": args.tokens_per_batch}
    if args.quick:  # 8 items a step (~800 real tokens): the whole run fits in 5 minutes
        return [Case(batch_size=args.batch_size or 8, **common)]
    return [
        Case(dataset=d, hidden=SIZES[s][0], layers=SIZES[s][1], lora=m == "lora",
             packing=p == "packed", batch_size=args.batch_size, **common)
        for s in args.sizes for d in args.datasets for m in args.modes for p in args.layouts
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small case (< 5 min)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--datasets", nargs="+", default=["chaosnli_snli", "summeval", "mtbench"])
    parser.add_argument("--modes", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--layouts", nargs="+", default=["padded", "packed"],
                        choices=["padded", "packed"])  # fmt: skip
    parser.add_argument("--steps", type=int, default=20, help="timed steps per side (>= 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (>= 1)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="padded items per step (0: per dataset, 32/8/4; --quick: 8)",
    )
    parser.add_argument("--tokens-per-batch", type=int, default=4096, help="packed tokens/step")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch intra-op threads of the peer (0: torch's default)",
    )
    parser.add_argument("--peer-malloc", default="same", choices=["same", "default"],
                        help="the peer's glibc malloc: jdjudge's host_malloc setting (same) or "
                        "glibc's defaults")  # fmt: skip
    parser.add_argument("--adversarial", default="first", choices=["first", "all", "none"],
                        help="cases that also time eps=0.25 (pgd, worst_case): the first of "
                        "each size, all, or none")  # fmt: skip
    parser.add_argument("--no-memory", action="store_true", help="skip the head memory check")
    parser.add_argument("--no-flops", action="store_true", help="skip the LoRA FLOPs check")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    parser.add_argument("--role", choices=list(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        from benchmarks.step_time_jdjudge import Case

        result = ROLES[args.role](Case.from_json(args.case), args.workdir)
        (args.workdir / f"{args.out}.json").write_text(json.dumps(result))
        return
    from benchmarks.step_time_jdjudge import shared_data

    shared_data()  # fails with a clear message before anything runs
    if args.torch_threads:
        os.environ[TORCH_THREADS] = str(args.torch_threads)
    os.environ[PEER_MALLOC] = args.peer_malloc
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="jdjudge-step-time-"))
    print(f"step_time: {load_line('at start')}; work files in {workdir}")
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print("step_time: WARNING: the machine is busy; CPU step times (torch's OpenMP threads "
              "most) move with the load: take figures on a quiet machine")  # fmt: skip
    results, memory, flops, first_of_size = [], [], [], set()
    try:
        for i, case in enumerate(cases(args)):
            size = (case.hidden, case.layers)
            first = size not in first_of_size
            first_of_size.add(size)
            pick = args.adversarial == "all" or (args.adversarial == "first" and first)
            results.append(measure_case(case, workdir / f"case{i}", args.quick or pick))
            if first and not args.quick and not args.no_memory:
                memory.append(run_child("memory", case, workdir / f"case{i}"))
            if first and not args.quick and not args.no_flops:
                flops.append(run_child("flops", case, workdir / f"case{i}"))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print_summary(results)
    print_extras(memory, flops)
    print(f"step_time: {time.perf_counter() - started:.0f} s; {load_line('at the end')}")
    if args.quick:
        print(f"speedup_vs_peer={results[0]['ratio']:.4f}")
        print(f"adversarial_overhead={results[0]['adversarial']['pgd']:.4f}")


if __name__ == "__main__":
    main()
