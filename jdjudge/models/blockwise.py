"""Blockwise (flash-style) causal attention over segments, in plain JAX, with its own VJP.

Why: the reference path materializes float32 scores [B, kv, g, L, L], so memory and time grow
with the square of the *row* length even when a packed row holds many short items. Here the row
is cut into blocks of ``block`` tokens; query block i visits only key blocks from the first one
its segments reach back to, up to i (causal), with an online softmax, so no L × L array ever
exists and blocks that no segment spans are never computed (``lax.while_loop`` bounds, which
really skip work on CPU). The backward recomputes each block's probabilities from the saved
log-sum-exp (FlashAttention-2), so the residuals are q, k, v, the output and the log-sum-exp:
linear in L.

Segments must be contiguous runs of one positive id (0 = padding), which is how the packer and
the padded batches lay them out; causality is by index. Padding queries get a zero output (the
reference gives them a uniform average); nothing downstream reads them.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

Array = jax.Array

_NEG = -1e30  # finite "minus infinity": a block with no visible key leaves exp(m - m') = 1


def _pad_to_blocks(x: Array, length: int) -> Array:
    extra = length - x.shape[1]
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, extra)
    return jnp.pad(x, widths)


def first_key_blocks(segment_ids: Array, block: int) -> Array:
    """For each query block i, the first key block any of its queries (in any row) attends to,
    or i + 1 when the block holds only padding: [num_blocks] int32.

    A token attends back to its segment's first token, found as the last index where the
    segment id changed (a running maximum), so no L × L comparison is needed."""
    _, length = segment_ids.shape
    index = jnp.arange(length, dtype=jnp.int32)
    changed = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
        axis=1,
    )
    start = jax.lax.cummax(jnp.where(changed, index, 0), axis=1)
    num_blocks = length // block
    key_block = jnp.where(segment_ids > 0, start // block, num_blocks)
    lowest = key_block.reshape(-1, num_blocks, block).min(axis=(0, 2))
    return jnp.minimum(lowest, jnp.arange(num_blocks, dtype=jnp.int32) + 1)


def _block_mask(segment_ids: Array, i: Array, j: Array, block: int, group: int) -> Array:
    """[B, 1, bq·g, bk]: causal, same segment, query not padding; each query row repeated for
    the ``group`` query heads that share a KV head (the head-major layout of ``_by_head``)."""
    q_seg = jax.lax.dynamic_slice_in_dim(segment_ids, i * block, block, axis=1)
    k_seg = jax.lax.dynamic_slice_in_dim(segment_ids, j * block, block, axis=1)
    offsets = jnp.arange(block, dtype=jnp.int32)
    causal = (j * block + offsets)[None, :] <= (i * block + offsets)[:, None]
    same = (q_seg[:, :, None] == k_seg[:, None, :]) & (q_seg > 0)[:, :, None]
    mask = jnp.repeat(causal[None] & same, group, axis=1)  # [B, bq·g, bk]
    return mask[:, None]


def _queries_by_head(x: Array) -> Array:
    """[B, L, kv, g, d] -> head-major [B, kv, L·g, d]."""
    b, length, nkv, g, d = x.shape
    return x.transpose(0, 2, 1, 3, 4).reshape(b, nkv, length * g, d)


def _by_head(q: Array, k: Array, v: Array) -> tuple[Array, Array, Array]:
    """[B, L, kv, g, d] / [B, L, kv, d] -> head-major [B, kv, L·g, d] / [B, kv, L, d]: every
    block product below is then a plain batched matmul over (B, kv) with one contracting
    axis, which XLA:CPU runs without transposing its operands inside the loops."""
    return _queries_by_head(q), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def _from_head(x: Array, group: int) -> Array:
    """[B, kv, L·g, d] -> [B, L, kv, g, d]."""
    b, nkv, rows, d = x.shape
    return x.reshape(b, nkv, rows // group, group, d).transpose(0, 2, 1, 3, 4)


def _forward(q: Array, k: Array, v: Array, segment_ids: Array, block: int):
    """Output [B, L, kv, g, d] (q's dtype) and log-sum-exp [B, kv, L·g] float32; L is a
    multiple of ``block``."""
    b, length, nkv, g, d = q.shape
    scale = d**-0.5
    num_blocks = length // block
    lo = first_key_blocks(segment_ids, block)
    q_h, k_h, v_h = _by_head(q, k, v)
    rows = block * g  # query rows of a block: its tokens × the group's heads

    def query_block(i: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        out, lse = carry
        q_blk = jax.lax.dynamic_slice_in_dim(q_h, i * rows, rows, axis=2)

        def key_block(state):
            j, m, total, acc = state
            k_blk = jax.lax.dynamic_slice_in_dim(k_h, j * block, block, axis=2)
            v_blk = jax.lax.dynamic_slice_in_dim(v_h, j * block, block, axis=2)
            mask = _block_mask(segment_ids, i, j, block, g)
            s = jnp.einsum("bkqd,bksd->bkqs", q_blk, k_blk, preferred_element_type=jnp.float32)
            s = jnp.where(mask, s * scale, _NEG)
            m_new = jnp.maximum(m, s.max(axis=-1))
            p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
            correction = jnp.exp(m - m_new)
            total_new = total * correction + p.sum(axis=-1)
            pv = jnp.einsum("bkqs,bksd->bkqd", p.astype(v.dtype), v_blk,
                            preferred_element_type=jnp.float32)  # fmt: skip
            return j + 1, m_new, total_new, acc * correction[..., None] + pv

        m0 = jnp.full((b, nkv, rows), _NEG, jnp.float32)
        total0 = jnp.zeros((b, nkv, rows), jnp.float32)
        acc0 = jnp.zeros((b, nkv, rows, d), jnp.float32)
        _, m, total, acc = jax.lax.while_loop(
            lambda state: state[0] <= i, key_block, (lo[i], m0, total0, acc0)
        )
        visible = total > 0
        safe = jnp.where(visible, total, 1.0)
        o_blk = jnp.where(visible[..., None], acc / safe[..., None], 0.0).astype(q.dtype)
        lse_blk = jnp.where(visible, m + jnp.log(safe), _NEG)
        out = jax.lax.dynamic_update_slice_in_dim(out, o_blk, i * rows, axis=2)
        lse = jax.lax.dynamic_update_slice_in_dim(lse, lse_blk, i * rows, axis=2)
        return out, lse

    out0 = jnp.zeros(q_h.shape, q.dtype)
    lse0 = jnp.full((b, nkv, length * g), _NEG, jnp.float32)
    out, lse = jax.lax.fori_loop(0, num_blocks, query_block, (out0, lse0))
    return _from_head(out, g), lse


def _backward(q, k, v, segment_ids, out, lse, d_out, block: int):
    """Gradients of q, k, v, recomputing each visited block's probabilities from ``lse``."""
    b, length, nkv, g, d = q.shape
    scale = d**-0.5
    num_blocks = length // block
    lo = first_key_blocks(segment_ids, block)
    q_h, k_h, v_h = _by_head(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32))
    do_h = _queries_by_head(d_out.astype(jnp.float32))
    o_h = _queries_by_head(out.astype(jnp.float32))
    delta = jnp.sum(do_h * o_h, axis=-1)  # D_i = rowsum(dO * O): [B, kv, L·g]
    rows = block * g

    def query_block(i: Array, carry):
        dq, dk, dv = carry
        q_blk = jax.lax.dynamic_slice_in_dim(q_h, i * rows, rows, axis=2)
        do_blk = jax.lax.dynamic_slice_in_dim(do_h, i * rows, rows, axis=2)
        lse_blk = jax.lax.dynamic_slice_in_dim(lse, i * rows, rows, axis=2)
        delta_blk = jax.lax.dynamic_slice_in_dim(delta, i * rows, rows, axis=2)

        def key_block(state):
            j, dq_blk, dk, dv = state
            k_blk = jax.lax.dynamic_slice_in_dim(k_h, j * block, block, axis=2)
            v_blk = jax.lax.dynamic_slice_in_dim(v_h, j * block, block, axis=2)
            mask = _block_mask(segment_ids, i, j, block, g)
            s = jnp.einsum("bkqd,bksd->bkqs", q_blk, k_blk) * scale
            p = jnp.where(mask, jnp.exp(jnp.where(mask, s, 0.0) - lse_blk[..., None]), 0.0)
            dv_blk = jnp.einsum("bkqs,bkqd->bksd", p, do_blk)
            dp = jnp.einsum("bkqd,bksd->bkqs", do_blk, v_blk)
            ds = p * (dp - delta_blk[..., None]) * scale
            dq_blk = dq_blk + jnp.einsum("bkqs,bksd->bkqd", ds, k_blk)
            dk_blk = jnp.einsum("bkqs,bkqd->bksd", ds, q_blk)
            dk = _add_block(dk, dk_blk, j * block)
            dv = _add_block(dv, dv_blk, j * block)
            return j + 1, dq_blk, dk, dv

        dq0 = jnp.zeros((b, nkv, rows, d), jnp.float32)
        _, dq_blk, dk, dv = jax.lax.while_loop(
            lambda state: state[0] <= i, key_block, (lo[i], dq0, dk, dv)
        )
        dq = jax.lax.dynamic_update_slice_in_dim(dq, dq_blk, i * rows, axis=2)
        return dq, dk, dv

    zeros = (jnp.zeros_like(q_h), jnp.zeros_like(k_h), jnp.zeros_like(v_h))
    dq, dk, dv = jax.lax.fori_loop(0, num_blocks, query_block, zeros)
    dk, dv = (x.transpose(0, 2, 1, 3) for x in (dk, dv))
    return _from_head(dq, g).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def _add_block(total: Array, part: Array, start: Array) -> Array:
    """total[:, :, start:start + n] += part, on the head-major [B, kv, L, d] layout."""
    current = jax.lax.dynamic_slice_in_dim(total, start, part.shape[2], axis=2)
    return jax.lax.dynamic_update_slice_in_dim(total, current + part, start, axis=2)


def balanced_block(length: int, block: int) -> int:
    """The block size actually used for a row of ``length``: as many blocks as ``block``
    needs, made equal and rounded up to a multiple of 8, so a row is padded by less than 8
    tokens a block rather than up to the next multiple of ``block`` (a 160-token row in blocks
    of 128 would be padded to 256 and cost three block products of 128 instead of three of 80).
    """
    blocks = -(-length // block)
    if blocks == 1:
        return length
    size = -(-length // blocks)  # ceil
    return -(-size // 8) * 8


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q: Array, k: Array, v: Array, segment_ids: Array, block: int) -> Array:
    return _forward(q, k, v, segment_ids, block)[0]


def _attention_fwd(q, k, v, segment_ids, block):
    out, lse = _forward(q, k, v, segment_ids, block)
    return out, (q, k, v, segment_ids, out, lse)


def _attention_bwd(block, residuals, d_out):
    q, k, v, segment_ids, out, lse = residuals
    dq, dk, dv = _backward(q, k, v, segment_ids, out, lse, d_out, block)
    return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def blockwise_attention(q: Array, k: Array, v: Array, segment_ids: Array, block: int) -> Array:
    """Causal segment attention: q [B, L, kv, g, d] (RoPE applied), k/v [B, L, kv, d],
    segment_ids int [B, L] -> [B, L, kv, g, d] in q's dtype. The row is cut into equal blocks
    of at most ``block`` (``balanced_block``), padded to fill them (the padding is segment 0,
    never attended to) and cut back afterwards."""
    length = q.shape[1]
    block = balanced_block(length, block)
    padded = -(-length // block) * block
    args = [_pad_to_blocks(x, padded) for x in (q, k, v, segment_ids)]
    return _attention(*args, block)[:, :length]
