"""Causal segment attention, one function over four implementations (``model.attention``).

All take RoPE'd queries grouped by KV head, q [B, L, kv, g, d], and k/v [B, L, kv, d], with
segment ids int [B, L] (contiguous runs of one positive id per item, 0 = padding), and return
[B, L, kv, g, d]. Outputs at padding queries differ between implementations and are never read.

- ``reference``: the whole float32 score tensor [B, kv, g, L, L] (einsum); HF's arithmetic.
- ``blockwise``: ``models.blockwise``: flash-style blocks in plain JAX, cost and memory
  following the segments (the CPU default).
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")``, causal, with the
  segment mask (GPU; bf16/fp16 only).
- ``splash``: the Pallas splash kernel (causal mask, segment ids), per KV head as
  multi-query attention; under a mesh (``mesh_context``) it runs inside ``shard_map`` over
  the batch and KV-head axes, as a Pallas call cannot be partitioned by XLA.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from jdjudge.models.blockwise import blockwise_attention

Array = jax.Array

_HALF_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
BATCH_AXES = ("data", "fsdp")  # the mesh axes a batch is split over (jdjudge.sharding)
HEAD_AXIS = "tensor"


def resolve_implementation(name: str, dtype: jnp.dtype, backend: str | None = None) -> str:
    """``auto`` -> the implementation for this backend and compute dtype."""
    if name != "auto":
        return name
    backend = backend or jax.default_backend()
    if backend == "tpu":
        return "splash"
    if backend in ("gpu", "cuda", "rocm") and jnp.dtype(dtype) in _HALF_PRECISION:
        return "cudnn"
    return "blockwise"


SPLASH_BLOCK = 128  # splash's tiles are 128 lanes wide: its blocks are multiples of them
LONG_ROW = 1024


def auto_block_size(packed_item_length: float) -> int:
    """``model.attention_block_size=0``: the largest power of two no longer than the median
    packed item, within 64–256: blocks about as long as the row's segments. Short packed
    items (ChaosNLI's median is 97 tokens) skip most of a long row in blocks of 64; items of
    hundreds of tokens run faster in fewer, larger block products of 256 (padded rows get
    ``row_block_size``)."""
    below = 2 ** math.floor(math.log2(max(packed_item_length, 1.0)))
    return int(min(256, max(64, below)))


def row_block_size(length: int) -> int:
    """The blockwise block for a row of ``length`` when the block is 0 and no data chose it:
    256 for rows longer than ``LONG_ROW``, else 128. One item a row, attention forward and
    backward alone (``benchmarks/attention_blocks.py``), 256 measured 11–23% faster than 128
    at 1,280 and 2,560 tokens; on shorter rows neither won consistently (each was ahead by up
    to 18% at some length, as much as this VM's noise), so they keep the smaller block
    (docs/performance.md#attention)."""
    return 256 if length > LONG_ROW else 128


def describe_blocks(implementation: str, dtype: jnp.dtype, block: int) -> str:
    """What ``train`` prints for ``model.attention_block_size=0``: the blocks it resolved to."""
    name = resolve_implementation(implementation, dtype)
    if name == "splash":
        return f"splash attention, blocks of {block or SPLASH_BLOCK} tokens"
    if name != "blockwise":
        return f"{name} attention (no blocks)"
    if block:
        return f"blockwise attention, blocks of up to {block} tokens"
    short, long = row_block_size(LONG_ROW), row_block_size(LONG_ROW + 1)
    return f"blockwise attention, blocks of up to {short} tokens ({long} in rows over {LONG_ROW:,})"


def segment_mask(segment_ids: Array) -> Array:
    """[B, L, L] bool: causal, same segment, both non-padding (segment id 0 = padding).

    Causality is by array index, which equals in-segment order because packed segments are
    contiguous.
    """
    length = segment_ids.shape[-1]
    causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    valid = (segment_ids > 0)[:, :, None] & (segment_ids > 0)[:, None, :]
    return causal[None] & same & valid


def reference_attention(q: Array, k: Array, v: Array, segment_ids: Array) -> Array:
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32)
    scores = scores * (q.shape[-1] ** -0.5)
    # finfo.min stays finite through softmax's max-subtraction: a fully masked (padding) row
    # becomes uniform rather than NaN.
    mask = segment_mask(segment_ids)[:, None, None]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgqs,bskd->bqkgd", probs, v)


def gathered_query_attention(
    q: Array, k: Array, v: Array, segment_ids: Array, query_index: Array
) -> Array:
    """Attention for a few queries only: q [B, N, kv, g, d] taken at row positions
    ``query_index`` int [B, N], over every key of the row (k/v [B, L, kv, d]); returns
    [B, N, kv, g, d]. The reference arithmetic on [B, kv, g, N, L] scores, so it costs N / L
    of a full layer's attention: the last layer of a judge, which reads only the answer
    positions (``Decoder.answer_hidden``). A query at a padding position (segment 0: an unused
    answer slot) sees no key and gets a uniform average, as in ``reference_attention``."""
    length = k.shape[1]
    scores = jnp.einsum("bnkgd,bskd->bkgns", q, k, preferred_element_type=jnp.float32)
    scores = scores * (q.shape[-1] ** -0.5)
    query_segment = jnp.take_along_axis(segment_ids, query_index, axis=1)[:, :, None]
    causal = jnp.arange(length, dtype=query_index.dtype)[None, None] <= query_index[:, :, None]
    mask = causal & (segment_ids[:, None, :] == query_segment) & (query_segment > 0)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgns,bskd->bnkgd", probs, v)


def cudnn_attention(
    q: Array, k: Array, v: Array, segment_ids: Array, implementation: str = "cudnn"
) -> Array:
    """Through ``jax.nn.dot_product_attention`` ([B, L, heads, d] layout, GQA native); the
    segment mask is passed as a boolean mask beside ``is_causal``. ``implementation="xla"``
    runs the same call on any backend (how CPU tests check the arguments)."""
    b, length, nkv, g, d = q.shape
    mask = segment_mask(segment_ids)[:, None]  # [B, 1, L, L]
    out = jax.nn.dot_product_attention(
        q.reshape(b, length, nkv * g, d), k, v, mask=mask, is_causal=True,
        implementation=implementation,
    )  # fmt: skip
    return out.reshape(b, length, nkv, g, d)


def _splash_kernel(length: int, group: int, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as masks,
    )

    mask = masks.MultiHeadMask([masks.CausalMask((length, length)) for _ in range(group)])
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )  # fmt: skip
    return splash.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def _splash_local(q: Array, k: Array, v: Array, segment_ids: Array, block: int, interpret: bool):
    """Unsharded splash on [B, kv, g, L, d] / [B, kv, L, d]: one MQA kernel per KV head."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import (
        SegmentIds,
    )

    # Built per trace, not cached: its mask tables become arrays of the trace that builds it.
    kernel = _splash_kernel(q.shape[3], q.shape[2], block, interpret)
    per_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over KV heads
    per_row = jax.vmap(per_head, in_axes=(0, 0, 0, 0))  # over batch rows
    return per_row(q, k, v, SegmentIds(segment_ids, segment_ids))


def splash_attention(
    q: Array, k: Array, v: Array, segment_ids: Array, block: int, interpret: bool = False
) -> Array:
    """The row is padded to a multiple of ``block`` with segment 0 (padding attends only to
    padding, so no query row is empty, as splash requires). ``interpret=True`` runs the
    kernel through the Pallas interpreter on any backend (tests)."""
    _, length, nkv, _, d = q.shape
    padded = -(-length // block) * block
    pad = [(0, 0), (0, padded - length)]
    q = jnp.pad(q * jnp.asarray(d**-0.5, q.dtype), pad + [(0, 0)] * 3)
    k, v = (jnp.pad(x, pad + [(0, 0)] * 2) for x in (k, v))
    segment_ids = jnp.pad(segment_ids, pad)
    q_t, k_t, v_t = q.transpose(0, 2, 3, 1, 4), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    local = functools.partial(_splash_local, block=block, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        batch = tuple(a for a in BATCH_AXES if a in mesh.axis_names) or None
        heads = (
            HEAD_AXIS if HEAD_AXIS in mesh.axis_names and nkv % mesh.shape[HEAD_AXIS] == 0 else None
        )
        spec = PartitionSpec(batch, heads)
        local = jax.shard_map(
            local, mesh=mesh, in_specs=(spec, spec, spec, PartitionSpec(batch)),
            out_specs=spec, check_vma=False,
        )  # fmt: skip
    out = local(q_t, k_t, v_t, segment_ids)  # [B, kv, g, L, d]
    return out.transpose(0, 3, 1, 2, 4)[:, :length].astype(v.dtype)


def attend(
    q: Array, k: Array, v: Array, segment_ids: Array, implementation: str, block: int
) -> Array:
    """Dispatch on a resolved or ``auto`` implementation name; ``block`` 0 picks the block
    from the row (``row_block_size``; splash: ``SPLASH_BLOCK``)."""
    name = resolve_implementation(implementation, q.dtype)
    if name == "reference":
        return reference_attention(q, k, v, segment_ids)
    if name == "blockwise":
        return blockwise_attention(q, k, v, segment_ids, block or row_block_size(q.shape[1]))
    if name == "cudnn":
        return cudnn_attention(q, k, v, segment_ids)
    if name == "splash":
        return splash_attention(q, k, v, segment_ids, block or SPLASH_BLOCK)
    raise ValueError(f"unknown attention implementation {implementation!r}")


@contextlib.contextmanager
def mesh_context(mesh: Mesh | None) -> Iterator[None]:
    """Make ``mesh`` visible to the kernels that need ``shard_map`` (splash) while a step is
    traced; a no-op without a mesh."""
    if mesh is None:
        yield
        return
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        yield
