"""Construction of shift-invariant layers in parts moved concurrently.

XLA's CPU runtime runs the batched product of a packed block on one core and
the operations of one compiled loop one after another, so a single program
moves all the blocks of a layer on one core, whatever the machine has.
Programs dispatched from different threads do run on different cores. So
construction splits the class-pure blocks of ``_packed.plan_blocks`` into P
contiguous parts of equal size (padding with empty blocks, whose zero samples
stay zero and add nothing) and carries them as P arrays, each with the class
Gram matrices of its blocks. A layer step is then

1. ``build``: sum the parts' Gram matrices into the covariances, factor them
   (the step's single batched factorization) and gather the representatives
   the collapse guard compares with;
2. one compiled ``sweep`` per part, P of them at once from P threads, each
   moving its blocks in place (``_packed.sweep``);
3. ``health``: the guard table from the parts' block statistics.

On accelerators, or on one core, P = 1 and the same programs run in order.
The parts and their summation order depend only on the plan, so a resumed
construction repeats an uninterrupted one bit for bit on the same machine.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from redunet_jax._checks import is_concrete
from redunet_jax._fourier import _bin_weights
from redunet_jax._packed import (
    accumulated_grams,
    health_from_blocks,
    layer_from_grams,
    pack,
    pack_rows,
    padded_plan,
    plan_blocks,
    sweep,
    unpack,
)

#: Most parts moved at once (one thread each).
MAX_PARTS = 8

_POOL: ThreadPoolExecutor | None = None

#: Sweeps compiled ahead of time for concurrent parts, by argument signature.
_PROGRAMS: dict = {}


def compiled_sweeps() -> int:
    """How many sweep programs have been compiled (both ways of calling it)."""
    # An attribute of jitted functions that type checkers do not know about.
    return getattr(_sweep_part, "_cache_size")() + len(_PROGRAMS)  # noqa: B009


def clear_compiled() -> None:
    """Forget every compiled program of the step (the next one compiles again)."""
    for program in (_to_parts, _from_parts, _build, _sweep_part, _health):
        getattr(program, "clear_cache")()  # noqa: B009
    _PROGRAMS.clear()


def _weak(x) -> bool:
    return bool(getattr(x, "weak_type", False))


def concurrent_parts(num_blocks: int, m: int, k: int, channels: int | None) -> int:
    """Number of parts construction moves at once: the CPU cores, at most 8.

    One on accelerators, where a single program already uses the device.
    Every part carries its own k class Gram matrices, (2C)² numbers per bin
    and class against 2C per bin and sample for the features, so the parts
    are also limited to m / (k C): their Gram matrices together never take
    more than twice the memory of the features (given ``channels`` C).
    """
    if jax.default_backend() != "cpu":
        return 1
    parts = min(os.cpu_count() or 1, MAX_PARTS, num_blocks)
    if channels is not None:
        parts = min(parts, m // (k * channels))
    return max(1, parts)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(MAX_PARTS - 1, thread_name_prefix="redunet-part")
    return _POOL


@partial(jax.jit, static_argnames=("block", "parts", "num_classes"))
def _to_parts(Z_hat, order, block_class, *, block: int, parts: int, num_classes: int):
    Y = jnp.split(pack(Z_hat, order, block), parts)
    classes = jnp.split(block_class, parts)
    grams = [
        accumulated_grams(y, c, num_classes) for y, c in zip(Y, classes, strict=True)
    ]
    return tuple(Y), tuple(grams)


@jax.jit
def _from_parts(Y_parts, inverse):
    return unpack(jnp.concatenate(Y_parts), inverse)


@partial(
    jax.jit,
    static_argnames=("num_positions", "rep_slots", "block", "parts", "use_labels"),
)
def _build(
    grams,
    Y_parts,
    Pi,
    eps_sq,
    weights,
    order,
    *,
    num_positions: int,
    rep_slots,
    block: int,
    parts: int,
    use_labels: bool,
):
    """Layer, rates, right multipliers, representatives and label blocks."""
    Pi = Pi.astype(grams[0].dtype)
    layer, rates, R = layer_from_grams(grams, Pi, eps_sq, weights, num_positions)

    (part, index, row), firsts = rep_slots
    rep_set = Y_parts[part][index, :, row]
    zero = jnp.zeros_like(rep_set)
    rep_class = jnp.stack(
        [zero if slot is None else Y_parts[slot[0]][slot[1], :, 0] for slot in firsts]
    )
    Pi_blocks = None
    if use_labels:
        Pi_blocks = tuple(jnp.split(pack_rows(Pi, order, block), parts))
    return layer, rates, R, (rep_set, rep_class), Pi_blocks


#: One part's sweep; its features are moved in place (donated).
_sweep_part = jax.jit(sweep, static_argnames=("num_classes",), donate_argnums=2)


@jax.jit
def _health(stats, Pi, block_class, E_hat, C_hat):
    stats = jnp.concatenate(stats)
    return health_from_blocks(
        stats, Pi.astype(stats.dtype), block_class, (E_hat, C_hat)
    )


class PackedConstruction:
    """The construction step of shift-invariant layers on packed parts.

    ``to_carry`` packs (m, C, F) coefficients into the carried parts,
    ``from_carry`` unpacks them, and calling the object runs one layer step
    with the contract of ``_network._construction_step``:
    ``(layer, carry_next, rates, health)``. The input parts are donated.

    Args:
      labels: (m,) integer labels.
      num_classes: number of classes k.
      signal_shape: ``(T,)`` or ``(H, W)``.
      use_labels: move with the label memberships instead of ``pihat``.
      chunk_size: samples per block, or ``None`` to choose.
      parts: number of parts, or ``None`` for :func:`concurrent_parts`.
      channels: C, which bounds the automatic number of parts by memory.
    """

    def __init__(
        self,
        labels,
        num_classes: int,
        *,
        signal_shape,
        use_labels: bool,
        chunk_size=None,
        parts: int | None = None,
        channels: int | None = None,
    ):
        labels = np.asarray(labels)
        m = labels.shape[0]
        plain = plan_blocks(labels, num_classes, chunk_size)
        if parts is None:
            blocks = len(plain.block_class)
            parts = concurrent_parts(blocks, m, num_classes, channels)
        plan = padded_plan(labels, num_classes, parts, chunk_size)
        n, b = len(plan.block_class), plan.block
        per = n // parts
        self.parts, self.block, self.num_classes = parts, b, num_classes
        self.use_labels = use_labels
        self.signal_shape = tuple(signal_shape)
        self.order = jnp.asarray(plan.order)
        self.inverse = jnp.asarray(plan.inverse)
        self.block_class = jnp.asarray(plan.block_class)
        valid = (plan.order < m).reshape(n, b)
        self.part_classes = tuple(jnp.split(self.block_class, parts))
        self.part_valid = tuple(jnp.split(jnp.asarray(valid), parts))

        first_block = {}
        for i, j in enumerate(plan.block_class[: len(plain.block_class)]):
            first_block.setdefault(int(j), i)
        slot = int(plan.inverse[0])
        set_slot = (slot // b // per, slot // b % per, slot % b)
        firsts = tuple(
            (first_block[j] // per, first_block[j] % per) if j in first_block else None
            for j in range(num_classes)
        )
        self.rep_slots = (set_slot, firsts)

    def _program(self, arguments):
        """The sweep compiled for these arguments, in the caller's JAX context."""
        leaves, tree = jax.tree.flatten(arguments)
        x64 = jax.dtypes.canonicalize_dtype(jnp.float64) == np.dtype(np.float64)
        # A program is compiled for the devices of its inputs.
        shapes = tuple((x.shape, x.dtype, _weak(x), x.sharding) for x in leaves)
        key = (self.num_classes, x64, tree, shapes)
        if key not in _PROGRAMS:
            lowered = _sweep_part.lower(*arguments, num_classes=self.num_classes)
            _PROGRAMS[key] = lowered.compile()
        return _PROGRAMS[key]

    def to_carry(self, Z_hat):
        """(m, C, F) coefficients to the carried parts and their Gram matrices."""
        return _to_parts(
            Z_hat,
            self.order,
            self.block_class,
            block=self.block,
            parts=self.parts,
            num_classes=self.num_classes,
        )

    def from_carry(self, carry):
        """The (m, C, F) coefficients of carried parts."""
        return _from_parts(carry[0], self.inverse)

    def __call__(self, carry, Pi, eps_sq, eta, lam):
        Y_parts, grams = carry
        weights = jnp.asarray(_bin_weights(self.signal_shape), Y_parts[0].dtype)
        layer, rates, R, reps, Pi_blocks = _build(
            grams,
            Y_parts,
            Pi,
            eps_sq,
            weights,
            self.order,
            num_positions=math.prod(self.signal_shape),
            rep_slots=self.rep_slots,
            block=self.block,
            parts=self.parts,
            use_labels=self.use_labels,
        )

        def arguments(p):
            return (
                R,
                layer.gamma,
                Y_parts[p],
                weights,
                eta,
                lam,
                self.part_classes[p],
                self.part_valid[p],
                reps,
                None if Pi_blocks is None else Pi_blocks[p],
            )

        # Traced or with jit disabled, the parts are moved one after another:
        # tracing state is per thread, and disabled jit compiles nothing.
        disabled = getattr(jax.config, "jax_disable_jit")  # noqa: B009 (untyped)
        plain = not is_concrete(Y_parts[0]) or disabled
        if self.parts == 1 or plain:
            moved = [
                _sweep_part(*arguments(p), num_classes=self.num_classes)
                for p in range(self.parts)
            ]
        else:
            # JAX's configuration contexts (``enable_x64`` and others) hold per
            # thread, so the sweep is compiled here, in the caller's context,
            # and the threads only run the compiled program.
            program = self._program(arguments(0))
            futures = [
                _pool().submit(program, *arguments(p)) for p in range(1, self.parts)
            ]
            moved = [program(*arguments(0))] + [future.result() for future in futures]
        Y_next, grams_next, stats = (tuple(part) for part in zip(*moved, strict=True))
        health = _health(stats, Pi, self.block_class, layer.E_hat, layer.C_hat)
        return layer, (Y_next, grams_next), rates, health
