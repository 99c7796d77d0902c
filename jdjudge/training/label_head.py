"""Training only the label columns of an untied head (``model.head_rows = "labels"``).

The judge reads the output projection only at its label tokens' columns, so in full
fine-tuning the other V − n columns of ``lm_head/kernel`` [D, V] would get gradients, weight
decay and Adam moments that can never change a judgment. With this option the trainable tree
holds just the n label columns [D, n]: the decoder runs with ``head_columns = n`` and the loss
gathers with the label ids remapped into [0, n) (``column_index``), while the whole kernel is a
frozen argument of the step, like a LoRA base (no gradient, no optimizer state). ``merge``
writes the trained columns back into it, so export, judging and a loaded checkpoint see a full
model like any other. The ids are stored in each checkpoint's metadata (``METADATA_KEY``):
loading a run needs them, and they come from the data, which loading does not read.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jdjudge.config.schema import Config
from jdjudge.models.config import DecoderConfig

HEAD = ("lm_head", "kernel")  # the param path of the untied head
METADATA_KEY = "head_token_ids"  # checkpoint metadata: the columns a run trained


def head_ids(
    config: Config, decoder: DecoderConfig, label_token_ids: np.ndarray | None
) -> np.ndarray | None:
    """The sorted distinct label token ids whose columns alone train, or None (every param of
    the model trains as it is): only with ``model.head_rows = "labels"``, full fine-tuning, an
    untied head, and the run's label tokens known (synonym padding repeats a real id)."""
    if (
        label_token_ids is None
        or config.model.head_rows != "labels"
        or config.lora.enabled
        or decoder.tie_embeddings
    ):
        return None
    ids = np.unique(np.asarray(label_token_ids, np.int32))
    if ids.size == 0 or ids[0] < 0 or ids[-1] >= decoder.vocab_size:
        raise ValueError(f"label token ids {ids.tolist()} are not in [0, {decoder.vocab_size})")
    return ids


def column_index(head: np.ndarray, label_token_ids: np.ndarray) -> np.ndarray:
    """Each label token's column in the [D, n] kernel: its position among ``head``."""
    label_token_ids = np.asarray(label_token_ids)
    position = np.searchsorted(head, label_token_ids)
    found = head[np.minimum(position, len(head) - 1)] == label_token_ids
    if not found.all():
        missing = sorted(set(label_token_ids[~found].tolist()))
        raise ValueError(f"label token ids {missing} are not among the trained head columns")
    return position.astype(np.int32)


def take_columns(params: dict[str, Any], kernel: Any, head: np.ndarray) -> dict[str, Any]:
    """``params`` (the model without its head) with ``kernel``'s label columns as lm_head."""
    return {**params, "lm_head": {"kernel": jnp.take(kernel, jnp.asarray(head), axis=1)}}


def merge(trainable: dict[str, Any], kernel: Any, head: np.ndarray) -> dict[str, Any]:
    """The full model: the frozen ``kernel`` [D, V] with the trained columns written back."""
    columns = trainable["lm_head"]["kernel"].astype(kernel.dtype)
    return {**trainable, "lm_head": {"kernel": kernel.at[:, jnp.asarray(head)].set(columns)}}
