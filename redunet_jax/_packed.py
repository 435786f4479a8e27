"""Shift-invariant layers in a packed real layout: the fast path of construction.

A complex C×C product costs four real ones, and CPUs run real matrix products
much faster than complex ones laid out as (m, C, F) arrays. So the fast path
stores the Fourier coefficients of a block of b samples at frequency p as one
real (b, 2C) matrix ``[Re z, Im z]`` and every C×C block ``M`` as the real
(2C, 2C) matrix ``R(M) = [[Re M, -Im M], [Im M, Re M]]``,
so that the rows of ``[Re z, Im z] @ R(M)^T`` are ``[Re Mz, Im Mz]``. Samples
are processed in blocks: one block's products with E and all k class operators,
its ``pihat``, its update and its renormalization are finished before the
next block starts, so intermediates stay in cache and no (m, k, C, F) array is
ever formed. For construction the samples are sorted by class and each class
is padded with zero samples to a whole number of blocks, so every block holds
one class and the k class covariances together cost about one covariance of
all samples (the classes partition them); zero samples contribute nothing and
stay zero.

The plain (m, C, F) complex implementation in ``_circulant.py`` is the
reference these functions are tested against.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from redunet_jax._vector import NORM_FLOOR, soft_membership

#: Smallest and largest automatic block sizes (samples per block).
MIN_BLOCK, MAX_BLOCK = 16, 32


class BlockPlan(NamedTuple):
    """Where each sample goes in the blocked layout (host arrays).

    Attributes:
      order: (n * b,) sample index of every slot; ``m`` marks a zero slot.
      inverse: (m,) slot of every sample.
      block_class: (n,) class of every block (0 when the plan ignores
        classes).
      block: samples per block b.
      groups: the classes in block order when every non-empty class holds
        the same number of blocks (then class covariances are one batched
        product per class), else ``None``.
    """

    order: np.ndarray
    inverse: np.ndarray
    block_class: np.ndarray
    block: int
    groups: tuple[int, ...] | None = None


def _padded(counts: np.ndarray, b: int) -> int:
    return int(np.sum(-(-counts // b) * b))


def choose_block(counts, chunk_size: int | None = None) -> int:
    """Samples per block: ``chunk_size``, or the size in [16, 32] that pads least.

    Args:
      counts: sizes of the groups that must start on a block boundary (the
        classes, or ``[m]``).
      chunk_size: explicit block size (capped at the largest group), or
        ``None``.

    Returns:
      The block size b >= 1.
    """
    counts = np.asarray(counts, np.int64)
    largest = max(int(counts.max()), 1)
    if chunk_size is not None:
        # A block larger than the largest group would only hold padding.
        return int(min(chunk_size, largest))
    if largest <= MAX_BLOCK:
        return largest
    candidates = range(MIN_BLOCK, MAX_BLOCK + 1)
    # Least padding first, then the larger block (fewer, fuller products).
    return min(candidates, key=lambda b: (_padded(counts, b), -b))


def plan_blocks(labels, num_classes: int, chunk_size: int | None = None) -> BlockPlan:
    """Blocked layout with every class starting on a block boundary.

    Args:
      labels: (m,) integer labels in ``[0, num_classes)``.
      num_classes: number of classes k.
      chunk_size: samples per block, or ``None`` to choose one in [16, 32].

    Returns:
      A :class:`BlockPlan`.
    """
    labels = np.asarray(labels)
    m = labels.shape[0]
    counts = np.bincount(labels, minlength=num_classes)
    b = choose_block(counts[counts > 0], chunk_size)

    order, block_class = [], []
    for j in range(num_classes):
        members = np.flatnonzero(labels == j)
        if members.size == 0:
            continue
        blocks = -(-members.size // b)
        slots = np.full(blocks * b, m)
        slots[: members.size] = members
        order.append(slots)
        block_class += [j] * blocks
    order = np.concatenate(order)
    inverse = np.empty(m, np.int64)
    inverse[order[order < m]] = np.flatnonzero(order < m)
    block_class = np.asarray(block_class, np.int32)
    present, per_class = np.unique(block_class, return_counts=True)
    uniform = bool(np.all(per_class == per_class[0]))
    groups = tuple(int(j) for j in present) if uniform else None
    return BlockPlan(order, inverse, block_class, b, groups)


def padded_plan(labels, num_classes: int, multiple: int, chunk_size=None) -> BlockPlan:
    """:func:`plan_blocks` with the number of blocks padded to a multiple.

    The extra blocks hold only zero slots (sample index ``m``) and are
    assigned to class 0, to which they add nothing.
    """
    plan = plan_blocks(labels, num_classes, chunk_size)
    m = int(np.asarray(labels).shape[0])
    extra = -len(plan.block_class) % multiple
    return BlockPlan(
        order=np.concatenate([plan.order, np.full(extra * plan.block, m)]),
        inverse=plan.inverse,
        block_class=np.concatenate([plan.block_class, np.zeros(extra, np.int32)]),
        block=plan.block,
    )


def plan_samples(m: int, chunk_size: int | None = None) -> BlockPlan:
    """Blocked layout of m samples in their own order (no classes)."""
    b = choose_block([m], chunk_size)
    n = -(-m // b)
    order = np.full(n * b, m)
    order[:m] = np.arange(m)
    return BlockPlan(order, np.arange(m), np.zeros(n, np.int32), b)


def pack(Z_hat: jax.Array, order: jax.Array, block: int) -> jax.Array:
    """(m, C, F) complex coefficients to (n, F, b, 2C) real blocks."""
    m, C, F = Z_hat.shape
    Y = jnp.concatenate([Z_hat.real, Z_hat.imag], axis=1)  # (m, 2C, F)
    Y = jnp.concatenate([Y, jnp.zeros((1, 2 * C, F), Y.dtype)])[order]
    return jnp.transpose(Y.reshape(-1, block, 2 * C, F), (0, 3, 1, 2))


def unpack(Yb: jax.Array, inverse: jax.Array) -> jax.Array:
    """Inverse of :func:`pack` for the samples listed in ``inverse``."""
    n, F, b, C2 = Yb.shape
    Y = jnp.transpose(Yb, (0, 2, 3, 1)).reshape(n * b, C2, F)[inverse]
    C = C2 // 2
    return jax.lax.complex(Y[:, :C], Y[:, C:])


#: Largest per-block Gram stack formed at once; larger ones are accumulated.
GRAM_BYTES = 64 * 2**20


def class_grams(
    Yb: jax.Array, block_class: jax.Array, num_classes: int, *, groups=None
):
    """Per-class sums of the Gram matrices ``y^T y`` of class-pure row blocks.

    Args:
      Yb: (n, *batch, b, D) blocks of b rows, each block of one class.
      block_class: (n,) class of every block.
      num_classes: number of classes k.
      groups: static tuple of the classes in block order when every class in
        it holds the same number of consecutive blocks (one batched product
        per class), or ``None`` (block Grams summed by class: all at once
        while they take at most ``GRAM_BYTES``, else one block at a time).

    Returns:
      (k, *batch, D, D); zero for classes without blocks.
    """
    n, *batch, b, D = Yb.shape
    shape = (num_classes, *batch, D, D)
    if groups is not None:
        g = len(groups)
        Yc = jnp.moveaxis(Yb.reshape(g, n // g, *batch, b, D), 1, -3)
        Yc = Yc.reshape(g, *batch, -1, D)
        grams = jnp.einsum("...ia,...ib->...ab", Yc, Yc)
        return jnp.zeros(shape, Yb.dtype).at[jnp.asarray(groups)].set(grams)
    if n * math.prod(batch) * D * D * Yb.dtype.itemsize <= GRAM_BYTES:
        grams = jnp.einsum("...ia,...ib->...ab", Yb, Yb)
        return jax.ops.segment_sum(grams, block_class, num_classes)

    def add_block(G, block):
        y, j = block
        return G.at[j].add(jnp.einsum("...ia,...ib->...ab", y, y)), None

    G, _ = jax.lax.scan(add_block, jnp.zeros(shape, Yb.dtype), (Yb, block_class))
    return G


def packed_covariances(
    Yb: jax.Array, block_class: jax.Array, num_classes: int, *, groups=None
):
    """Covariances of all samples and of every class from class-pure blocks.

    The classes partition the samples, so the k class covariances together
    cost one covariance of all samples, and their sum is the covariance of
    all samples. With ``groups`` (every class in it holds the same number of
    consecutive blocks) each class is one batched product over its samples;
    otherwise the per-block Gram matrices are summed by class, all at once
    while they take at most ``GRAM_BYTES``, else one block at a time (so no
    per-block array is ever stacked).

    Args:
      Yb: (n, F, b, 2C) packed blocks, each holding samples of one class.
      block_class: (n,) class of every block.
      num_classes: number of classes k.
      groups: static tuple of the classes in block order, or ``None``.

    Returns:
      (k + 1, F, C, C) complex ``[Sigma, Sigma_1, ..., Sigma_k]``.
    """
    return covariances_from_grams(
        class_grams(Yb, block_class, num_classes, groups=groups)
    )


def covariances_from_grams(grams) -> jax.Array:
    """(k, F, 2C, 2C) real class Gram matrices to (k + 1, F, C, C) covariances.

    Row 0 is the covariance of all samples (the sum over classes), then one
    row per class, as :func:`packed_covariances` returns them.

    Args:
      grams: the class Gram matrices, or a sequence of them (one per part of
        the samples) to be summed; the sum, the total over classes and the
        complex covariances are then formed in one pass.
    """
    parts = tuple(grams) if isinstance(grams, (tuple, list)) else (grams,)
    first = parts[0]
    C = first.shape[-1] // 2
    # The sum over classes as products with ones: XLA's CPU reduction over
    # the leading axis is several times slower.
    ones = jnp.ones(first.shape[0], first.dtype)
    G, total = first, jnp.tensordot(ones, first, axes=(0, 0))
    for more in parts[1:]:
        G, total = G + more, total + jnp.tensordot(ones, more, axes=(0, 0))
    G = jnp.concatenate([total[None], G])
    # For rows [x, u] of z = x + iu: z z^H = (x x' + u u') + i (u x' - x u').
    real = G[..., :C, :C] + G[..., C:, C:]
    imag = G[..., C:, :C] - G[..., :C, C:]
    return jax.lax.complex(real, imag)


def real_blocks(M: jax.Array) -> jax.Array:
    """(s, F, C, C) complex blocks to (F, 2C, s * 2C) right multipliers.

    The rows of ``[Re z, Im z] @ R(M)^T`` are ``[Re Mz, Im Mz]``. ``R(M)`` is
    symmetric for Hermitian ``M`` (constructed layers), but fine-tuned blocks
    need not be Hermitian, so the transpose is taken explicitly.
    """
    s, F, C, _ = M.shape
    Mt = jnp.swapaxes(M, -1, -2)
    top = jnp.concatenate([Mt.real, Mt.imag], axis=-1)
    bottom = jnp.concatenate([-Mt.imag, Mt.real], axis=-1)
    R = jnp.concatenate([top, bottom], axis=-2)  # (s, F, 2C, 2C)
    return jnp.transpose(R, (1, 2, 0, 3)).reshape(F, 2 * C, s * 2 * C)


def _move_block(R, y, gamma, weights, eta, lam, Pi=None):
    """One block (F, b, 2C) through a layer; ``R`` stacks E then every C_j.

    Reductions run over the minor (contiguous) axis first and the frequency
    sums are small dot products: XLA's CPU loops are much faster that way
    than with one multi-axis reduction or an einsum that transposes.
    """
    F, b, C2 = y.shape
    k = gamma.shape[0]
    products = (y @ R).reshape(F, b, k + 1, C2)

    # All k + 1 squared norms, E's dropped afterwards: slicing the products
    # first would copy them.
    sq = jnp.tensordot(weights, jnp.square(products).sum(-1), axes=(0, 0))[:, 1:]
    norms = jnp.sqrt(jnp.maximum(sq, NORM_FLOOR * NORM_FLOOR))
    pihat = soft_membership(gamma, norms, lam)

    coefficients = gamma * (pihat if Pi is None else Pi)
    signs = jnp.concatenate([jnp.ones((b, 1), y.dtype), -coefficients], axis=1)
    y_new = y + eta * (products * signs[None, :, :, None]).sum(axis=2)

    scale = jnp.tensordot(weights, jnp.square(y_new).sum(-1), axes=(0, 0))
    scale = jnp.sqrt(jnp.maximum(scale, NORM_FLOOR * NORM_FLOOR))
    return y_new / scale[None, :, None], pihat


def packed_move(E_hat, C_hat, gamma, Yb, weights, eta, lam, Pi_blocks=None):
    """Apply one layer to packed blocks, one block at a time.

    Args:
      E_hat: (F, C, C) expansion blocks.
      C_hat: (k, F, C, C) compression blocks.
      gamma: (k,) class proportions.
      Yb: (n, F, b, 2C) packed features.
      weights: (F,) bin weights.
      eta: step size.
      lam: inverse temperature of ``pihat``.
      Pi_blocks: optional (n, b, k) memberships that replace ``pihat`` in the
        update.

    Returns:
      ``(Yb_next, pihat)`` of shapes (n, F, b, 2C) and (n, b, k).
    """
    R = real_blocks(jnp.concatenate([E_hat[None], C_hat]))
    weights = weights.astype(Yb.dtype)

    n, _, b, _ = Yb.shape
    k = gamma.shape[0]

    def body(i, carry):
        # Block i is read, then overwritten in place by its output.
        Yb, pihat = carry
        y = jax.lax.dynamic_index_in_dim(Yb, i, keepdims=False)
        Pi = None if Pi_blocks is None else Pi_blocks[i]
        y, p = _move_block(R, y, gamma, weights, eta, lam, Pi)
        Yb = jax.lax.dynamic_update_index_in_dim(Yb, y, i, 0)
        return Yb, jax.lax.dynamic_update_index_in_dim(pihat, p, i, 0)

    pihat = jnp.zeros((n, b, k), Yb.dtype)
    return jax.lax.fori_loop(0, n, body, (Yb, pihat))


def pack_rows(rows: jax.Array, order: jax.Array, block: int) -> jax.Array:
    """(m, k) per-sample rows to (n, b, k) blocks, zero rows in padding slots."""
    padded = jnp.concatenate([rows, jnp.zeros((1, rows.shape[1]), rows.dtype)])
    return padded[order].reshape(-1, block, rows.shape[1])


def _weighted_sq(x: jax.Array, weights: jax.Array) -> jax.Array:
    """(..., F, b, 2C) packed rows to their (..., b) squared norms over bins."""
    return jnp.tensordot(jnp.square(x).sum(-1), weights, axes=(-2, 0))


def _block_statistics(y, valid, rep_set, rep_class, weights):
    """Largest squared norm, distance to sample 0 and to the class representative.

    Over the valid rows of one (F, b, 2C) block; padding rows count as 0.
    """
    rows = jnp.stack(
        [
            _weighted_sq(y, weights),
            _weighted_sq(y - rep_set[:, None], weights),
            _weighted_sq(y - rep_class[:, None], weights),
        ]
    )
    return jnp.max(jnp.where(valid, rows, 0.0), axis=1)


def health_from_blocks(stats, Pi, block_class, operators=None):
    """The ``_guards.layer_health`` table from (n, 3) per-block maxima."""
    from redunet_jax._guards import health_table

    m, k = Pi.shape

    def per_class(x):  # (n,) block maxima to (k,) class maxima, 0 if empty
        return jnp.maximum(jax.ops.segment_max(x, block_class, k), 0.0)

    norms, to_set, to_class = stats[:, 0], stats[:, 1], stats[:, 2]
    counts = jnp.concatenate([jnp.array([m], stats.dtype), jnp.sum(Pi, 0, stats.dtype)])
    devs = jnp.concatenate([jnp.max(to_set)[None], per_class(to_class)])
    norms = jnp.concatenate([jnp.max(norms)[None], per_class(norms)])
    return health_table(counts, devs, norms, operators)


def _add_block_gram(G, j, y):
    """``G`` with the Gram matrices of block ``y`` (F, b, 2C) added to class j.

    The transposed block is materialized (the barrier keeps XLA from folding
    the transpose into the product), so that the product has the plain
    (F, 2C, b) @ (F, b, 2C) layout that XLA's CPU backend hands to its fast
    matrix-multiply library; folded, it runs about half as fast.
    """
    yt = jax.lax.optimization_barrier(jnp.swapaxes(y, -1, -2))
    return G.at[j].add(yt @ y)


def accumulated_grams(Yb, block_class, num_classes: int):
    """:func:`class_grams` summed block by block in block order.

    The sums a construction step accumulates for its output, with the same
    rounding; used for the features construction starts (or resumes) from.
    """
    n, F, _, C2 = Yb.shape

    def body(i, G):
        y = jax.lax.dynamic_index_in_dim(Yb, i, keepdims=False)
        return _add_block_gram(G, block_class[i], y)

    G = jnp.zeros((num_classes, F, C2, C2), Yb.dtype)
    return jax.lax.fori_loop(0, n, body, G)


def sweep(
    R,
    gamma,
    Yb,
    weights,
    eta,
    lam,
    block_class,
    valid,
    reps,
    Pi_blocks=None,
    *,
    num_classes: int,
):
    """Move class-pure packed blocks through a layer, one block at a time, in place.

    On the way, each input block yields its degeneracy statistics (those of
    ``_guards.layer_health``, padding slots ignored) and each output block
    adds its Gram matrices to its class, so the next layer's covariances and
    this layer's health cost no further pass over the features.

    Args:
      R: (F, 2C, (k + 1) 2C) right multipliers of E and every C_j
        (:func:`real_blocks`).
      gamma: (k,) class proportions.
      Yb: (n, F, b, 2C) packed features, each block of one class.
      weights: (F,) bin weights.
      eta: step size.
      lam: inverse temperature of ``pihat``.
      block_class: (n,) class of every block.
      valid: (n, b) which slots hold samples.
      reps: ``(rep_set, rep_class)``, sample 0 (F, 2C) and the first member
        of every class (k, F, 2C), from all the features.
      Pi_blocks: optional (n, b, k) memberships that replace ``pihat``.
      num_classes: number of classes k.

    Returns:
      ``(Yb_next, grams_next, stats)``: the moved features, the (k, F, 2C, 2C)
      class Gram matrices of the moved features, and (n, 3) per-block maxima
      of the input features.
    """
    n, F, b, C2 = Yb.shape
    rep_set, rep_class = reps

    def body(i, carry):
        Yb, G, stats = carry
        j = block_class[i]
        y = jax.lax.dynamic_index_in_dim(Yb, i, keepdims=False)
        rows = _block_statistics(y, valid[i], rep_set, rep_class[j], weights)
        Pi = None if Pi_blocks is None else Pi_blocks[i]
        y, _ = _move_block(R, y, gamma, weights, eta, lam, Pi)
        G = _add_block_gram(G, j, y)
        Yb = jax.lax.dynamic_update_index_in_dim(Yb, y, i, 0)
        return Yb, G, stats.at[i].set(rows)

    G = jnp.zeros((num_classes, F, C2, C2), Yb.dtype)
    stats = jnp.zeros((n, 3), Yb.dtype)
    return jax.lax.fori_loop(0, n, body, (Yb, G, stats))


def layer_from_grams(grams, Pi, eps_sq, weights, num_positions):
    """Layer, rates of its features and right multipliers from class Grams.

    Args:
      grams: (k, F, 2C, 2C) class Gram matrices of the packed features, or
        a sequence of them to be summed (one per part).
      Pi: (m, k) one-hot memberships in the features' real dtype.
      eps_sq: distortion.
      weights: (F,) bin weights.
      num_positions: T (H * W in 2D).

    Returns:
      ``(layer, rates, R)`` with ``R`` from :func:`real_blocks` of E and
      every C_j.
    """
    from redunet_jax._circulant import _layer_from_covariances

    layer, rates = _layer_from_covariances(
        covariances_from_grams(grams),
        jnp.sum(Pi, axis=0),
        Pi.shape[0],
        eps_sq,
        weights,
        num_positions,
    )
    R = real_blocks(jnp.concatenate([layer.E_hat[None], layer.C_hat]))
    return layer, rates, R


def packed_forward(layers, Z_hat, weights, eta, lam, *, chunk_size=None):
    """Scan stacked layers over (m, C, F) coefficients in the packed layout.

    Returns:
      ``(Z_hat_out, pihat)``: (m, C, F) coefficients and the last layer's
      (m, k) ``pihat``.
    """
    m = Z_hat.shape[0]
    k = layers.gamma.shape[-1]
    plan = plan_samples(m, chunk_size)
    order, inverse = jnp.asarray(plan.order), jnp.asarray(plan.inverse)

    def body(carry, layer):
        Yb, _ = carry
        E_hat, C_hat, gamma = layer
        return packed_move(E_hat, C_hat, gamma, Yb, weights, eta, lam), None

    Yb = pack(Z_hat, order, plan.block)
    pihat = jnp.zeros((Yb.shape[0], plan.block, k), Yb.dtype)
    (Yb, pihat), _ = jax.lax.scan(body, (Yb, pihat), layers)
    return unpack(Yb, inverse), pihat.reshape(-1, k)[inverse]
