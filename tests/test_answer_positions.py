"""The judge's outputs at the answer positions: the label-only head and the last layer run on
the answer positions only, both against the full-vocabulary logits of every position."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdjudge.models.config import DecoderConfig
from jdjudge.models.decoder import Decoder, init_params
from tests.test_decoder import TINY, right_padded, run


@pytest.mark.parametrize("tie", [False, True])
def test_judge_logits_match_full_logits(tie):
    config = dataclasses.replace(TINY, tie_embeddings=tie)
    params = init_params(config, jax.random.key(1))
    tokens, segs, pos = right_padded([9, 5, 6], 9, config.vocab_size, seed=1)
    answer = jnp.array([8, 4, 2], jnp.int32)
    labels = jnp.array([[3, 17, 3], [40, 41, 96], [0, 5, 60], [7, 8, 9]], jnp.int32)  # K=4, S=3
    full = run(config, params, tokens, segs, pos, method="logits")
    want = full[jnp.arange(3)[:, None, None], answer[:, None, None], labels[None]]
    got = run(config, params, tokens, segs, pos, answer, labels, method="judge_logits")
    assert got.shape == (3, 4, 3) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

    # [B, N] answer indices (several packed items per row) give [B, N, K, S].
    multi = jnp.stack([answer, jnp.zeros_like(answer)], axis=1)
    got2 = run(config, params, tokens, segs, pos, multi, labels, method="judge_logits")
    assert got2.shape == (3, 2, 4, 3)
    np.testing.assert_allclose(got2[:, 0], want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got2[:, 1], full[:, 0][:, labels], atol=1e-5, rtol=0)


def _packed_rows(config: DecoderConfig, seed: int):
    """Two rows of 40 tokens: three and two items, then padding; answers at each item's last
    token but the second's (two before it, so causality matters), and one unused answer slot
    that points at padding (segment 0)."""
    rng = np.random.default_rng(seed)
    lengths = [[9, 17, 6], [21, 12]]
    tokens = np.zeros((2, 40), np.int32)
    segs, pos = np.zeros_like(tokens), np.zeros_like(tokens)
    answers = np.full((2, 3), 39, np.int32)  # row 1's third slot: padding
    for row, items in enumerate(lengths):
        start = 0
        for item, n in enumerate(items):
            tokens[row, start : start + n] = rng.integers(0, config.vocab_size, n)
            segs[row, start : start + n], pos[row, start : start + n] = item + 1, np.arange(n)
            answers[row, item] = start + n - (3 if item == 1 else 1)
            start += n
    return tokens, segs, pos, answers


@pytest.mark.parametrize("attention", ["reference", "blockwise"])
def test_answer_only_last_layer_matches_the_full_layer(attention):
    """``judge_logits`` runs the last layer at the answer positions only; the full-vocabulary
    logits (every layer over every position) taken at those positions are the reference, for
    the values and for the gradients of a loss on them."""
    config = dataclasses.replace(TINY, num_layers=3, attention=attention, attention_block_size=16)
    params = init_params(config, jax.random.key(7))
    tokens, segs, pos, answers = _packed_rows(config, seed=7)
    labels = jnp.array([[3, 17], [40, 41], [5, 60]], jnp.int32)
    model = Decoder(config)

    def judged(p):
        return model.apply({"params": p}, tokens, segs, pos, answers, labels,
                           method=Decoder.judge_logits)  # fmt: skip

    def from_full(p):
        full = model.apply({"params": p}, tokens, segs, pos, method=Decoder.logits)
        at_answers = jnp.take_along_axis(full, jnp.asarray(answers)[..., None], axis=1)
        return at_answers[..., labels]

    got, want = jax.jit(judged)(params), jax.jit(from_full)(params)
    real = answers != 39
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5)
    assert np.isfinite(np.asarray(got)).all()  # the padding slot too

    def loss(fn):
        return lambda p: jnp.sum(jnp.where(real[..., None, None], jax.nn.log_softmax(fn(p)), 0))

    got_grads = jax.jit(jax.grad(loss(judged)))(params)
    want_grads = jax.jit(jax.grad(loss(from_full)))(params)
    jax.tree.map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5), got_grads, want_grads
    )
