"""The train step's batch as shapes only, without the dataset or the tokenizer.

A plan is made before anything is downloaded, so the batch cannot come from the data. Its
structure does not need to: every key, dtype and shape of a step's batch is fixed by the
config, the mesh and the label count K. To get them exactly as training does, a stand-in
dataset (one 1-token item and items of ``data.max_length`` tokens: the worst case for the row
width and for the packer's item slots) goes through the real batch sources (``data.sources``)
and ``prefetch.local_batch``; only the arrays' shapes and dtypes are kept.

- Packed rows (``data.packing``): R rows of the longest row the packer can choose for such
  items (``sources.packed_row_limit``, or the smallest bucket holding 4 of them) with N item
  slots, R·L ≈ ``data.tokens_per_batch`` and R a multiple of ``sharding.packed_rows_multiple``
  (the data-parallel devices and the processes, as training rounds it), N =
  ``max_items_per_row``.
- Padded rows: ``batch_size`` rows of ``data.max_length`` tokens (the widest bucket).

Memory does not depend on which token ids label the K answers, so a plan uses K distinct
ids (0..K−1, one surface form each; ``label_ids``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jdjudge.config.schema import Config
from jdjudge.data import synthetic
from jdjudge.data.batching import EncodedDataset
from jdjudge.data.loaders import dices, mtbench
from jdjudge.data.loaders.common import LIKERT_LABELS
from jdjudge.data.loaders.nli import ABDUCTIVE_LABELS, NLI_LABELS
from jdjudge.data.prefetch import local_batch
from jdjudge.data.sources import BatchSource, make_source
from jdjudge.sharding import batch_sharding, packed_rows_multiple

# Each loader's label set (K), from the loaders' own constants: every record of a dataset
# carries the same labels. The generic `jsonl` loader takes them from its rows: --labels=K.
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "synthetic": synthetic.LABELS,
    "chaosnli_snli": NLI_LABELS,
    "chaosnli_mnli": NLI_LABELS,
    "chaosnli_alphanli": ABDUCTIVE_LABELS,
    "snli": NLI_LABELS,
    "mnli": NLI_LABELS,
    "summeval": LIKERT_LABELS,
    "newsroom": LIKERT_LABELS,
    "mtbench": mtbench.LABELS,
    "dices_350": dices.LABELS,
    "dices_990": dices.LABELS,
}


def num_labels(config: Config, override: int | None = None) -> tuple[int, str]:
    """K and where it came from: ``override`` (``--labels``), else the dataset's label set."""
    if override is not None:
        if override < 2:
            raise ValueError(f"--labels={override}: a judgment needs at least 2 labels")
        return override, "--labels"
    labels = LABEL_SETS.get(config.data.name)
    if labels is None:
        raise ValueError(
            f"dataset {config.data.name!r} takes its labels from its files: pass --labels=K"
        )
    return len(labels), f"the {config.data.name} label set ({', '.join(labels)})"


def label_ids(k: int) -> tuple[np.ndarray, np.ndarray]:
    """K distinct label token ids int32[K, 1] and their synonym mask (all real)."""
    return np.arange(k, dtype=np.int32)[:, None], np.ones((k, 1), bool)


def has_truth(config: Config) -> bool:
    """Whether batches carry ``true_targets`` (``JudgmentData.has_truth``): the synthetic
    task's truth, or the dense distribution behind subsampled annotations. A ``jsonl`` file
    may carry its own; it is assumed not to (one [R, N, K] float32 array less)."""
    return config.data.name == "synthetic" or config.data.subsample > 0


def _stand_in(max_length: int, long_items: int, k: int) -> EncodedDataset:
    """One item of 1 token (the most item slots) and ``long_items`` of ``max_length``: their
    mean makes the packer choose its widest row (one that holds 4 mean-length items)."""
    n = 1 + long_items
    lengths = np.array([1] + [max_length] * long_items, np.int32)
    targets = np.full((n, k), 1.0 / k, np.float32)
    return EncodedDataset(
        tokens=np.zeros((n, max_length), np.int32), lengths=lengths, targets=targets,
        true_targets=targets.copy(), has_truth=np.ones(n, bool),
        ids=["short"] + [f"long{i}" for i in range(long_items)], pad_id=0,
    )  # fmt: skip


def batch_source(config: Config, k: int, rows_multiple: int) -> BatchSource:
    """A batch source over the stand-in dataset, built as training builds its own. It holds
    two full packed batches and more, so that step 0 has the full-batch shape (an epoch's last
    batch may take a smaller tail shape), and at least 8 long items, whose mean is then within
    1/9 of ``data.max_length``."""
    data = config.data
    long_items = max(8, 2 * -(-data.tokens_per_batch // data.max_length))
    train = _stand_in(data.max_length, long_items, k)
    return make_source(config, {"train": train}, rows_multiple, 0)


def host_batch(config: Config, k: int, rows_multiple: int) -> dict[str, np.ndarray]:
    """A worst-case training batch as the loop hands it to the step (this process's rows of
    it: in a single-process plan, all of them)."""
    batch = batch_source(config, k, rows_multiple).train_batch(0)
    return local_batch(batch, has_truth(config))


def abstract_batch(config: Config, mesh: Mesh, k: int, processes: int = 1) -> dict[str, Any]:
    """The step's global batch as ShapeDtypeStructs in the batch sharding. ``processes`` is
    how many hosts the real run has (the packer rounds rows to a multiple of it)."""
    sharding = batch_sharding(mesh)
    return {
        key: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)
        for key, value in host_batch(config, k, packed_rows_multiple(mesh, processes)).items()
    }


def batch_summary(batch: dict[str, Any], packed: bool) -> dict[str, int]:
    """Rows, width, item slots and computed tokens of a (possibly abstract) batch."""
    rows, width = batch["tokens"].shape
    answer = batch["answer_index"].shape
    slots = answer[1] if len(answer) == 2 else 1
    summary = {"rows": int(rows), "width": int(width), "tokens": int(rows * width)}
    if packed:
        summary["item_slots"] = int(slots)
    return summary
