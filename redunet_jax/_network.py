"""Layer-by-layer construction of a ReduNet, stacked storage and the test-time map.

A network is stored as one layer pytree whose arrays carry a leading layer
axis, so applying it is a ``lax.scan`` over layers and constructing it compiles
the layer step once, whatever the depth.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from redunet_jax._checks import (
    check_float32,
    check_float_array,
    check_int,
    check_labels,
    check_positive,
)
from redunet_jax._circulant import (
    CirculantLayer,
    _build_circulant_with_rates,
    _move_circulant,
)
from redunet_jax._concurrent import PackedConstruction
from redunet_jax._fourier import (
    _bin_weights,
    _irfft,
    _rfft,
    check_signals,
    weighted_sq_norm,
)
from redunet_jax._guards import DegeneracyGuard, layer_health, resolve_compute_dtype
from redunet_jax._linalg import safe_norm, single_threaded_lapack
from redunet_jax._packed import packed_forward, plan_blocks
from redunet_jax._rates import Rates, _vector_rates, paired_rates
from redunet_jax._sharded import check_mesh, sharded_construction_step
from redunet_jax._spectral_rates import _spectral_rates
from redunet_jax._vector import (
    NORM_FLOOR,
    WOODBURY_RATIO,
    VectorLayer,
    _build_with_rates,
    _move,
    blocked_layer_with_rates,
    woodbury_classes_jit,
)


class _Domain(NamedTuple):
    """Where a network's layers work: raw vectors, or rfft coefficients.

    ``encode``/``decode`` move features into and out of that domain once per
    block of layers; ``build`` (operators and the rates of the features they
    were built from), ``move`` and ``rates`` work inside it. Each of ``build``
    and ``rates`` factors its matrices in one batched call. ``sq_norm`` gives
    the squared norm of every encoded sample (over the whole signal).
    """

    encode: Callable
    decode: Callable
    build: Callable
    move: Callable
    rates: Callable
    sq_norm: Callable


def _vector_sq_norm(Z):
    return jnp.sum(Z * Z, axis=-1)


def _identity(Z):
    return Z


def _domain(signal_shape: tuple[int, ...] | None) -> _Domain:
    """Layer functions for vectors (``None``) or signals of a given shape."""
    if signal_shape is None:
        return _Domain(
            _identity,
            _identity,
            _build_with_rates,
            _move,
            _vector_rates,
            _vector_sq_norm,
        )
    positions = math.prod(signal_shape)
    weights = jnp.asarray(_bin_weights(signal_shape))

    def build(Z_hat, Pi, eps_sq):
        return _build_circulant_with_rates(Z_hat, Pi, eps_sq, weights, positions)

    def move(layer, Z_hat, eta, lam, Pi=None):
        return _move_circulant(layer, Z_hat, eta, lam, weights, Pi)

    def rates(Z_hat, Pi, eps_sq, *, per_class=False):
        return _spectral_rates(
            Z_hat, Pi, eps_sq, weights, positions, per_class=per_class
        )

    return _Domain(
        _rfft,
        partial(_irfft, signal_shape=signal_shape),
        build,
        move,
        rates,
        partial(weighted_sq_norm, weights=weights),
    )


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["layers"],
    meta_fields=["eta", "lam", "eps_sq", "num_classes", "input_shape"],
)
@dataclasses.dataclass(frozen=True)
class ReduNet:
    """A constructed ReduNet: stacked layer operators and their hyperparameters.

    It is a pytree (only ``layers`` holds arrays), so it can be passed through
    ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

    Attributes:
      layers: a ``VectorLayer`` whose arrays have a leading axis of length
        ``num_layers`` (E (L, d, d), C (L, k, d, d), gamma (L, k)), or a
        ``CirculantLayer`` of Fourier blocks (E_hat (L, F, C, C), C_hat
        (L, k, F, C, C), gamma (L, k)).
      eta: step size of every layer.
      lam: inverse temperature of the soft membership.
      eps_sq: distortion used in construction.
      num_classes: number of classes k.
      input_shape: shape of one input sample: ``(d,)``, ``(C, T)`` or
        ``(C, H, W)``.

    Example:
      >>> import jax
      >>> X = jax.random.normal(jax.random.key(0), (40, 3))
      >>> net, _ = construct(X, (X[:, 0] > 0).astype(int), num_classes=2, num_layers=2)
      >>> net.num_layers, net.input_shape, net.invariant, net.layers.C.shape
      (2, (3,), False, (2, 2, 3, 3))
      >>> [leaf.shape for leaf in jax.tree.leaves(net)]  # E, C and gamma only
      [(2, 3, 3), (2, 2, 3, 3), (2, 2)]
    """

    layers: VectorLayer | CirculantLayer
    eta: float
    lam: float
    eps_sq: float
    num_classes: int
    input_shape: tuple[int, ...]

    @property
    def num_layers(self) -> int:
        """Number of stacked layers."""
        return int(self.layers.gamma.shape[0])

    @property
    def invariant(self) -> bool:
        """Whether the layers are shift-invariant (circulant, Fourier domain)."""
        return isinstance(self.layers, CirculantLayer)

    @property
    def signal_shape(self) -> tuple[int, ...] | None:
        """``(T,)`` or ``(H, W)`` for shift-invariant networks, else ``None``."""
        return self.input_shape[1:] if self.invariant else None

    @property
    def dtype(self) -> np.dtype:
        """Real compute dtype of the layers (float32, or float64 under x64)."""
        return np.dtype(self.layers.gamma.dtype)


def normalize(Z: ArrayLike) -> jax.Array:
    """Scale every sample (row) of ``Z`` to unit Euclidean norm (zeros stay zero).

    Each sample is first scaled by a power of two that brings its largest
    magnitude into [0.5, 1), so that the sum of squares neither overflows nor
    underflows for samples of any finite scale (entries below the smallest
    normal number, about 1.2e-38 in float32, count as zero on CPUs).
    bfloat16 and float16 samples are scaled in float32 and rounded once at the
    end, so the result keeps the dtype of ``Z`` (integers give the default
    float type) with at most one rounding error per entry.

    Args:
      Z: (m, ...) samples; every axis after the first belongs to one sample.

    Returns:
      An array of the shape of ``Z`` whose samples have unit norm.

    Raises:
      TypeError: if ``Z`` is not a real numeric array.
      ValueError: if ``Z`` has no axis or is empty, if concrete ``Z`` holds NaN
        or infinite values, or if its values do not fit the float type they
        are computed in (float64 input with 64-bit mode off).

    Example:
      >>> import numpy as np
      >>> print(np.asarray(normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))))
      [[0.6 0.8]
       [0.  0. ]]
    """
    source = getattr(Z, "dtype", None)
    checked = check_float_array(Z, "Z", ndims=tuple(range(1, 65)))
    half_precision = (
        source is not None
        and jnp.issubdtype(source, jnp.floating)
        and np.dtype(source).itemsize < 4
    )
    return _normalize(checked).astype(source if half_precision else checked.dtype)


def _normalize(Z: jax.Array) -> jax.Array:
    """:func:`normalize` without the check of the values (callers checked them)."""
    floating = jnp.issubdtype(Z.dtype, jnp.floating)
    out_dtype = Z.dtype if floating else jnp.result_type(float)
    Z = Z.astype(jnp.promote_types(out_dtype, jnp.float32))
    axes = tuple(range(1, Z.ndim))
    peak = jnp.max(jnp.abs(Z), axis=axes, keepdims=True)
    # Scaled by powers of two (exact), in two halves: near the top of the
    # range 1 / peak is below the smallest normal number, which CPUs flush to
    # zero, and the compiler may turn a division into that reciprocal.
    # The output does not depend on these scales, so no gradient flows
    # through them (and ``ldexp`` itself has a wrong derivative at zero).
    _, exponent = jax.lax.stop_gradient(jnp.frexp(jnp.where(peak > 0, peak, 1.0)))
    half = exponent // 2
    one = jnp.ones((), Z.dtype)
    Z = Z * jnp.ldexp(one, -half) * jnp.ldexp(one, half - exponent)
    Z = Z / jnp.expand_dims(safe_norm(Z, axis=axes, floor=NORM_FLOOR), axes)
    return Z.astype(out_dtype)


@partial(jax.jit, static_argnames=("use_labels", "signal_shape", "block", "groups"))
def _construction_step(
    Z,
    Pi,
    eps_sq,
    eta,
    lam,
    plan=None,
    *,
    use_labels: bool,
    signal_shape,
    block=None,
    groups=None,
    classes=None,
):
    """Build a layer from ``Z``, move ``Z``; also returns the rates of ``Z``.

    Given a ``plan`` (class-sorted sample blocks, see ``_packed.plan_blocks``),
    vector layers sum their class covariances over blocks; ``classes`` are
    precomputed vector class operators (``_vector.woodbury_classes``).
    Shift-invariant construction runs ``_concurrent.PackedConstruction``
    instead; this plain step is its reference.
    """
    domain = _domain(signal_shape)
    if plan is not None and signal_shape is None:
        layer, rates = blocked_layer_with_rates(
            Z, Pi, eps_sq, plan, block=block, groups=groups, classes=classes
        )
        Z_next, _ = domain.move(layer, Z, eta, lam, Pi if use_labels else None)
    else:
        layer, rates = domain.build(Z, Pi, eps_sq)
        Z_next, _ = domain.move(layer, Z, eta, lam, Pi if use_labels else None)
    health = layer_health(Z, Pi, domain.sq_norm, operators=(layer[0], layer[1]))
    return layer, Z_next, rates, health


@partial(jax.jit, static_argnames=("signal_shape",))
def _rates_step(Z, Pi, eps_sq, *, signal_shape):
    """Rates of ``Z`` and its :func:`layer_health` (without operators)."""
    domain = _domain(signal_shape)
    return domain.rates(Z, Pi, eps_sq), layer_health(Z, Pi, domain.sq_norm)


def _vector_step(step, y: np.ndarray, num_classes: int, d: int, dtype):
    """The vector construction step for labels ``y``: blocked class covariances.

    When the largest class has at most ``WOODBURY_RATIO * d`` samples, the
    class operators come from their m_j×m_j systems in a separately compiled
    program (see ``woodbury_classes``) and the step factors only E.
    """
    counts = np.bincount(y, minlength=num_classes)
    largest = int(counts.max())
    if largest > WOODBURY_RATIO * d:
        blocks = plan_blocks(y, num_classes, min(largest, 64))
        plan = tuple(jnp.asarray(a) for a in blocks[:3])
        return partial(step, plan=plan, block=blocks.block, groups=blocks.groups)

    blocks = plan_blocks(y, num_classes, largest)  # one block per class
    plan = tuple(jnp.asarray(a) for a in blocks[:3])
    m_j = jnp.asarray(counts, dtype)
    base = partial(step, plan=plan, block=blocks.block, groups=blocks.groups)

    def woodbury_step(Z, Pi, eps_sq, eta, lam):
        classes = woodbury_classes_jit(
            Z,
            plan[0],
            plan[2],
            m_j,
            eps_sq,
            block=blocks.block,
            num_classes=num_classes,
        )
        return base(Z, Pi, eps_sq, eta, lam, classes=classes)

    return woodbury_step


@partial(jax.jit, donate_argnums=0)
def _write_layer(stacked, layer, index):
    """Write one layer into the stacked buffers in place (they are donated)."""
    return jax.tree.map(
        lambda buffer, leaf: jax.lax.dynamic_update_index_in_dim(
            buffer, leaf, index, 0
        ),
        stacked,
        layer,
    )


def _physical_memory() -> int | None:
    """Bytes of physical memory of this machine, if the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _check_network_fits(num_layers: int, layer) -> None:
    """Refuse a depth whose stacked operators alone exceed physical memory."""
    needed = num_layers * sum(leaf.nbytes for leaf in jax.tree.leaves(layer))
    available = _physical_memory()
    if jax.default_backend() == "cpu" and available and needed > available:
        raise ValueError(
            f"num_layers={num_layers} needs {needed / 2**30:.1f} GiB for the "
            f"network's operators alone, more than this machine's "
            f"{available / 2**30:.1f} GiB; use fewer layers"
        )


class _LayerStack(Sequence):
    """Layers written one by one into preallocated stacked buffers.

    Stacking a list of layers at the end would hold every layer twice; here
    each new layer is copied into buffers of the final (L, ...) shapes, which
    are donated to the update, so the network is held once (plus one layer).
    Reads as a list of layers too (``len`` and slices), for checkpoints.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 0
        self.buffers = None

    def append(self, layer) -> None:
        if self.buffers is None:
            _check_network_fits(self.capacity, layer)
            self.buffers = jax.tree.map(
                lambda leaf: jnp.zeros((self.capacity, *leaf.shape), leaf.dtype), layer
            )
        self.buffers = _write_layer(self.buffers, layer, self.size)
        self.size += 1

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        if not -self.size <= index < self.size:
            raise IndexError(index)
        return jax.tree.map(lambda buffer: buffer[index % self.size], self.buffers)

    def stacked(self):
        """The (L, ...) stacked layers; the stack must be full."""
        assert self.size == self.capacity and self.buffers is not None
        return self.buffers


def construct(
    X,
    labels,
    *,
    num_classes: int,
    num_layers: int,
    eta: float = 0.5,
    eps_sq: float = 0.1,
    lam: float = 500.0,
    invariant: bool = False,
    use_labels: bool = False,
    chunk_size: int | None = None,
    compute_dtype=None,
    on_degenerate: str = "raise",
    callback: Callable[[int, Rates], None] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[ReduNet, jax.Array]:
    r"""Construct a ReduNet by forward propagation, one closed-form layer per step.

    Inputs are scaled to unit norm; then, for each layer, the operators are
    built from the current training features and labels and the features are
    moved by one step of projected gradient ascent on the rate reduction:

    .. math::

       Z \leftarrow \mathcal{P}_{S}\big(Z + \eta (E Z - \textstyle\sum_j
       \gamma_j \hat\pi_j(Z) C_j Z)\big)

    The layer step is one compiled function whose shapes do not change, so a
    network of any depth compiles it once. Cost per layer O(k m d² + k d³).

    Args:
      X: (m, d) training inputs, or (m, C, T) / (m, C, H, W) signals when
        ``invariant=True``.
      labels: (m,) integer labels in ``[0, num_classes)``.
      num_classes: number of classes k (>= 2).
      num_layers: number of layers L (>= 1).
      eta: step size ``eta``.
      eps_sq: distortion ``ε²`` (> 0).
      lam: inverse temperature ``lambda`` of the soft membership (>= 0).
      invariant: build shift-invariant (circulant) layers for signals ``X`` of
        shape (m, C, T) or (m, C, H, W); they are built and applied on the
        rfft coefficients, one C×C block per frequency (cost per layer
        O(k m C² F + k C³ F) with F = T // 2 + 1 bins), and commute with
        circular shifts of the signal axes.
      use_labels: move training features with their true memberships (the
        paper's variant) instead of the estimated ``pihat`` (the reference
        behaviour, which moves training and test data through the same map).
      chunk_size: samples per block of the shift-invariant fast path (default:
        chosen in [16, 32] to pad the classes least). Each class is padded
        with zero samples to whole blocks; a layer visits one block at a time,
        so besides the features and the operators it holds one block's
        (F, b, 2(k + 1)C) intermediates. Smaller blocks use less memory,
        larger ones pad more; values above the largest class size are capped
        at it. Ignored for vector networks.
      compute_dtype: dtype of the covariances, factorizations and
        log-determinants, and of the whole construction: ``jnp.float32`` or
        ``jnp.float64`` (the latter needs ``jax_enable_x64``). Default: float64
        for float64 inputs under x64, else float32; bfloat16 and float16 inputs
        are always computed in float32 or wider. The network and the returned
        features are in this dtype (``net.dtype``).
      on_degenerate: what to do when the features of a class with at least 2
        samples, or of the whole set, collapse onto one point (all identical
        or all zero, to within 16 rounding units; a single all-zero sample is
        fine): ``"raise"`` (default) a ``ValueError`` naming the layer, the
        class and the cause, ``"warn"`` once per class and continue, or
        ``"ignore"``. A failed factorization (non-finite log-determinants or
        operators) always raises, since no later layer could be built. The
        checks are computed inside the compiled layer step.
      callback: called as ``callback(layer_index, rates)`` after each layer with
        the rates of the new training features under the true labels. When a
        run resumes from a checkpoint it is first called for the restored
        layers, with their stored rates, so it sees every index once.
      checkpoint_dir: folder of checkpoints (created if missing). If it holds
        a checkpoint of the same inputs and settings, construction resumes
        after its last layer, and the network and features are bit-identical
        to those of an uninterrupted run on the same machine and library
        versions; a checkpoint with fewer layers than ``num_layers`` is
        extended, one with more is an error (its intermediate features are
        not kept, so it cannot be truncated exactly). The final state is
        always checkpointed. Files are never unpickled.
      checkpoint_every: write a checkpoint after every ``checkpoint_every``
        completed layers (default 1 with ``checkpoint_dir``). Each checkpoint
        writes the new layers and the features ``Z`` (m × d values).
      mesh: a one-axis ``jax.sharding.Mesh`` (e.g.
        ``jax.make_mesh((jax.device_count(),), ("data",))``) to construct on
        several devices, or several hosts after ``jax.distributed.initialize``.
        The samples (rows of Z; class-pure blocks for ``invariant=True``) are
        split across the devices for the covariance sums (an all-reduce), the
        k + 1 matrices (times F frequencies) are split for the factorization,
        and every device moves its own samples. The network and the features
        are replicated on the mesh's devices and equal the single-device
        result up to the rounding of the summation order. Default ``None``:
        the default device.

    Returns:
      ``(net, Z)``: the network and the output training features, of the shape
      of ``X``.

    Raises:
      ValueError: for wrong shapes, labels out of range, non-finite inputs,
        ``eps_sq <= 0``, ``num_layers < 1``, ``num_classes < 2``, an
        unsupported ``compute_dtype`` (float64 without ``jax_enable_x64``), if a
        layer produces non-finite features or a factorization fails, or (with
        ``on_degenerate="raise"``) if features collapse, e.g. ``"layer 7: all 40
        samples of class 2 are identical (features collapsed); ..."``; for a
        checkpoint that is corrupted
        (checksum mismatch), truncated, from another library version, for other
        inputs or settings, or longer than ``num_layers`` (the message names
        the file and the cause); for a ``mesh`` with more than one axis.
      TypeError: for non-numeric inputs or non-integer labels, or a ``mesh``
        that is not a ``jax.sharding.Mesh``.

    References:
      ReduNet (JMLR 2022), Algorithm 1.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> X = jax.random.normal(jax.random.key(0), (40, 3))
      >>> y = (X[:, 0] > 0).astype(int)
      >>> net, Z = construct(X, y, num_classes=2, num_layers=3)
      >>> net.num_layers, Z.shape
      (3, (40, 3))
    """
    num_classes = check_int(num_classes, "num_classes", minimum=2)
    num_layers = check_int(num_layers, "num_layers", minimum=1)
    if mesh is not None:
        mesh = check_mesh(mesh)
    if chunk_size is not None:
        chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    eps_sq = check_positive(check_float32(eps_sq, "eps_sq"), "eps_sq")
    eta = check_positive(check_float32(eta, "eta"), "eta")
    lam = check_float32(lam, "lam")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    X = check_signals(X, "X") if invariant else check_float_array(X, "X", ndims=(2,))
    y = check_labels(labels, "labels", m=X.shape[0], num_classes=num_classes)
    signal_shape = tuple(X.shape[2:]) if invariant else None
    domain = _domain(signal_shape)
    dtype = resolve_compute_dtype(compute_dtype, X.dtype)
    guard = DegeneracyGuard(on_degenerate, dtype=dtype)

    Z = domain.encode(_normalized_as(X, dtype))
    Pi = jax.nn.one_hot(y, num_classes, dtype=dtype)
    hyper = [jnp.asarray(v, dtype) for v in (eps_sq, eta, lam)]
    step = partial(_construction_step, use_labels=use_labels, signal_shape=signal_shape)
    # The features as carried from layer to layer: packed for invariant layers.
    to_carry = from_carry = _identity
    if invariant and mesh is None:
        step = PackedConstruction(
            np.asarray(y),
            num_classes,
            signal_shape=signal_shape,
            use_labels=use_labels,
            chunk_size=chunk_size,
            channels=X.shape[1],
        )
        to_carry, from_carry = step.to_carry, step.from_carry
    elif mesh is None:
        step = _vector_step(step, np.asarray(y), num_classes, X.shape[1], dtype)
    if mesh is not None:
        step = sharded_construction_step(
            mesh,
            np.asarray(y),
            num_classes=num_classes,
            use_labels=use_labels,
            signal_shape=signal_shape,
            chunk_size=chunk_size,
        )
    checkpoints = None
    if checkpoint_dir is not None or checkpoint_every is not None:
        # Imported here: the checkpoint module reads files through io, which
        # imports this module.
        from redunet_jax._checkpoint import open_checkpoints

        settings: dict[str, object] = dict(
            num_classes=num_classes, eta=eta, eps_sq=eps_sq, lam=lam
        )
        settings.update(invariant=bool(invariant), use_labels=bool(use_labels))
        # The block size changes the rounding of the covariance sums.
        settings.update(chunk_size=chunk_size)
        checkpoints = open_checkpoints(
            checkpoint_dir, checkpoint_every, X, y, settings=settings
        )

    def report(index, rates):
        if not np.isfinite(float(rates.delta_r)):
            raise ValueError(
                f"layer {index} produced non-finite features; try a larger eps_sq "
                "or a smaller eta"
            )
        history.append(rates)
        if callback is not None:
            callback(index, rates)

    # Each step returns the rates of its input, i.e. of the previous layer's
    # output, from the factorization that builds its operators.
    layers, history = _LayerStack(num_layers), []
    if checkpoints is not None:
        layer_spec, _, rates_spec = jax.eval_shape(
            lambda Z: step(to_carry(Z), Pi, *hyper), Z
        )[:3]
        spec = (layer_spec, jax.ShapeDtypeStruct(Z.shape, Z.dtype), rates_spec)
        saved, Z, restored = checkpoints.restore(Z, spec, num_layers=num_layers)
        for layer in saved:
            layers.append(layer)
        del saved
        for index, rates in enumerate(restored):
            report(index, rates)
    carry = to_carry(Z)
    del Z  # the packed copy is donated to the first step
    with single_threaded_lapack():
        for index in range(len(layers), num_layers):
            layer, carry, rates, health = step(carry, Pi, *hyper)
            # One transfer for both (the rates' host copy is then reused).
            health, _ = jax.device_get((health, rates))
            guard.check(health, produced_by=index - 1, built=index)
            if index > 0:
                report(index - 1, rates)
            layers.append(layer)
            if checkpoints is not None and checkpoints.due(len(layers)):
                checkpoints.save(layers, from_carry(carry), history)
        Z = from_carry(carry)
        final, health = _rates_step(Z, Pi, hyper[0], signal_shape=signal_shape)
        health, _ = jax.device_get((health, final))
        guard.check(health, produced_by=num_layers - 1, built=None)
        report(num_layers - 1, final)
    if checkpoints is not None:
        checkpoints.save(layers, Z, history)

    net = ReduNet(
        layers=layers.stacked(),
        eta=eta,
        lam=lam,
        eps_sq=eps_sq,
        num_classes=num_classes,
        input_shape=tuple(X.shape[1:]),
    )
    return net, domain.decode(Z)


def _check_input(net: ReduNet, X) -> jax.Array:
    X = check_float_array(X, "X", ndims=(len(net.input_shape) + 1,))
    if net.invariant:
        X = check_signals(X, "X")
    if tuple(X.shape[1:]) != net.input_shape:
        raise ValueError(
            f"X samples must have shape {net.input_shape} for this network, "
            f"got X of shape {tuple(X.shape)}"
        )
    return X


def _normalized_as(X, dtype) -> jax.Array:
    """Unit-norm ``X`` in ``dtype``, normalized in the wider of the two dtypes.

    Narrow inputs are widened before the scaling (so bfloat16 inputs do not
    carry a bfloat16 rounding into float32 layers); wider ones are scaled
    first, so that float64 values beyond the float32 range still normalize.
    """
    X = jnp.asarray(X)
    return _normalize(X.astype(jnp.promote_types(X.dtype, dtype))).astype(dtype)


def encoded_forward(layers, X, *, signal_shape, eta, lam, num_classes: int):
    """Scan stacked layers over normalized inputs; features stay encoded.

    Returns the output features in the layers' domain (rfft coefficients for
    shift-invariant layers) and the last layer's (m, k) ``pihat``, computed in
    the layers' dtype.

    Args:
      layers: stacked ``VectorLayer`` or ``CirculantLayer`` (leading layer
        axis).
      X: (m, *input_shape) inputs, already validated.
      signal_shape: ``(T,)`` or ``(H, W)`` for circulant layers, else None.
      eta: step size.
      lam: inverse temperature of ``pihat``.
      num_classes: number of classes k.

    Returns:
      ``(Z, pihat)``: (m, d) or (m, C, F) encoded features and (m, k) ``pihat``.

    Raises:
      TypeError, ValueError: from JAX, if the shapes of ``X`` and ``layers``
        do not match; inputs are not validated here (the public functions
        check them), so that the function traces under ``jit`` and ``grad``.
    """
    domain = _domain(signal_shape)
    dtype = layers.gamma.dtype

    def body(carry, layer):
        Z_next, pihat = domain.move(layer, carry[0], eta, lam)
        return (Z_next, pihat), None

    Z = domain.encode(_normalized_as(X, dtype))
    pihat = jnp.zeros((X.shape[0], num_classes), dtype)
    (Z, pihat), _ = jax.lax.scan(body, (Z, pihat), layers)
    return Z, pihat


@jax.jit
def _forward(net: ReduNet, X):
    if net.invariant:
        # The packed real layout (see ``_packed``): the same map as
        # ``encoded_forward``, several times faster on CPU.
        signal_shape = net.signal_shape
        assert signal_shape is not None
        dtype = net.layers.gamma.dtype
        Z_hat, pihat = packed_forward(
            net.layers,
            _rfft(_normalized_as(X, dtype)),
            jnp.asarray(_bin_weights(signal_shape), dtype),
            net.eta,
            net.lam,
        )
        return _irfft(Z_hat, signal_shape), pihat
    Z, pihat = encoded_forward(
        net.layers,
        X,
        signal_shape=net.signal_shape,
        eta=net.eta,
        lam=net.lam,
        num_classes=net.num_classes,
    )
    return _domain(net.signal_shape).decode(Z), pihat


def transform(net: ReduNet, X) -> jax.Array:
    """Map inputs through every layer of ``net`` (pure, jit-able).

    Layers whose classes are much smaller than the feature dimension (large
    ``alpha_j = d / (m_j eps_sq)``) stretch directions outside each class's
    training span, so rounding differences grow from layer to layer: then
    ``transform(net, X_train)`` matches the features returned by ``construct``
    only to rounding for the first few layers and drifts after that (both
    are valid float32 evaluations of the same map; predictions agreed in our
    tests). Use ``construct``'s output as the training features.

    Args:
      net: a constructed network.
      X: (m, *net.input_shape) inputs; scaled to unit norm first.

    Returns:
      (m, *net.input_shape) output features on the unit sphere, in the
      network's dtype ``net.dtype`` (its compute dtype), whatever the dtype of
      ``X``.

    Raises:
      ValueError: if the sample shape differs from the network's or ``X`` holds
        non-finite values.

    Example:
      >>> import jax
      >>> X = jax.random.normal(jax.random.key(0), (40, 3))
      >>> net, Z = construct(X, (X[:, 0] > 0).astype(int), num_classes=2, num_layers=2)
      >>> bool(jax.numpy.allclose(transform(net, X), Z, atol=1e-5))
      True
    """
    return _forward(net, _check_input(net, X))[0]


def predict_proba(net: ReduNet, X) -> jax.Array:
    """Soft memberships ``pihat`` (m, k) computed by the last layer of ``net``.

    ``pihat_j(z) = softmax_j(-lam * ||C_j z||)`` for the features ``z``
    entering the last layer; rows sum to 1.

    Args:
      net: a constructed network.
      X: (m, *net.input_shape) inputs.

    Returns:
      (m, k) soft memberships.

    Raises:
      ValueError: if the sample shape differs from the network's or ``X`` holds
        non-finite values.
      TypeError: if ``X`` is not a real numeric array.

    Example:
      >>> import jax
      >>> X = jax.random.normal(jax.random.key(0), (40, 3))
      >>> net, _ = construct(X, (X[:, 0] > 0).astype(int), num_classes=2, num_layers=2)
      >>> pihat = predict_proba(net, X)
      >>> pihat.shape, bool(jax.numpy.allclose(pihat.sum(axis=1), 1.0, atol=1e-5))
      ((40, 2), True)
    """
    return _forward(net, _check_input(net, X))[1]


def predict(net: ReduNet, X) -> jax.Array:
    """Class of each input: ``argmax_j pihat_j`` at the last layer.

    Args:
      net: a constructed network.
      X: (m, *net.input_shape) inputs.

    Returns:
      (m,) int32 predicted labels.

    Raises:
      ValueError: if the sample shape differs from the network's or ``X`` holds
        non-finite values.
      TypeError: if ``X`` is not a real numeric array.

    Example:
      >>> import jax
      >>> X = jax.random.normal(jax.random.key(0), (40, 3))
      >>> y = (X[:, 0] > 0).astype(int)
      >>> net, _ = construct(X, y, num_classes=2, num_layers=2)
      >>> predict(net, X).shape
      (40,)
    """
    return jnp.argmax(predict_proba(net, X), axis=-1).astype(jnp.int32)


@jax.jit
def _rates_scan(net: ReduNet, X, Pi):
    k = net.num_classes
    domain = _domain(net.signal_shape)

    def body(Z, layer):
        Z_next, pihat = domain.move(layer, Z, net.eta, net.lam)
        estimated = jax.nn.one_hot(jnp.argmax(pihat, axis=-1), k, dtype=Pi.dtype)
        return Z_next, paired_rates(domain.rates, Z_next, Pi, estimated, net.eps_sq)

    Z = domain.encode(_normalized_as(X, Pi.dtype))
    _, (true, estimated) = jax.lax.scan(body, Z, net.layers)
    return true, estimated


def rates_per_layer(net: ReduNet, X, labels) -> dict[str, Rates]:
    """Rates of the features entering and leaving each layer, for evaluation.

    Args:
      net: a constructed network.
      X: (m, *net.input_shape) inputs.
      labels: (m,) integer labels.

    Returns:
      A dict with ``"input"`` (rates of the normalized inputs, scalars),
      ``"true"`` and ``"estimated"``: ``Rates`` of shape (L,) for the output of
      each layer, under the true labels and under ``argmax pihat`` of that layer.
      All are computed in the network's dtype ``net.dtype``.

    Raises:
      ValueError: if the sample shape differs from the network's, ``X`` holds
        non-finite values, or labels are out of range or of the wrong length.
      TypeError: if ``X`` is not a real numeric array or the labels are not
        integers.

    Example:
      >>> import jax
      >>> X = jax.random.normal(jax.random.key(0), (40, 3))
      >>> y = (X[:, 0] > 0).astype(int)
      >>> net, _ = construct(X, y, num_classes=2, num_layers=2)
      >>> rates = rates_per_layer(net, X, y)
      >>> rates["input"].delta_r.shape, rates["true"].delta_r.shape
      ((), (2,))
      >>> bool((rates["true"].delta_r >= 0).all())  # true labels: ΔR >= 0
      True
    """
    X = _check_input(net, X)
    y = check_labels(labels, "labels", m=X.shape[0], num_classes=net.num_classes)
    Pi = jax.nn.one_hot(y, net.num_classes, dtype=net.dtype)
    domain = _domain(net.signal_shape)
    with single_threaded_lapack():
        true, estimated = _rates_scan(net, X, Pi)
        start, _ = _rates_step(
            domain.encode(_normalized_as(X, net.dtype)),
            Pi,
            net.eps_sq,
            signal_shape=net.signal_shape,
        )
        jax.block_until_ready((true, estimated, start))
    return {"input": start, "true": true, "estimated": estimated}
