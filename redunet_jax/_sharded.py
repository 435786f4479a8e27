"""Construction across the devices of a one-axis ``jax.sharding.Mesh``.

A layer step has three parts, and each is split across the D devices of the
mesh in the way that suits it:

* **Covariances.** The samples are split: the rows of Z for vector networks,
  the class-pure packed blocks of the fast path (``_packed``) for
  shift-invariant ones. Each device sums the Gram matrices of its own samples
  and one ``psum`` (an all-reduce) adds them up. The number of rows or blocks
  is padded with zero samples to a multiple of D; zero samples contribute
  nothing to any sum.
* **Factorization.** The (k + 1) stacked matrices (times F frequencies for
  shift-invariant layers) are flattened into one batch axis, padded with
  zero covariances (identity matrices once shifted) to a multiple of D, and
  each device factors its share in one batched Cholesky call; the operators
  and log-determinants are then gathered on every device.
* **Update.** Every device moves its own samples through the layer.

The layer, the rates and the output features are replicated on every device
of the mesh, so the loop of ``construct``, its guards and its checkpoints
work unchanged; the network equals the single-device one up to the rounding
of the summation order. ``jax.distributed`` spans hosts: the mesh then holds
the devices of every process, and every process runs the same construction.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from redunet_jax._checks import is_concrete
from redunet_jax._circulant import _layer_from_covariances
from redunet_jax._fourier import _bin_weights
from redunet_jax._linalg import scaled_inverse_and_logdet
from redunet_jax._packed import (
    pack,
    pack_rows,
    packed_covariances,
    packed_move,
    padded_plan,
    unpack,
)
from redunet_jax._rates import class_counts, rates_from_logdets, vector_covariances
from redunet_jax._vector import VectorLayer, _move


def check_mesh(mesh, name: str = "mesh") -> Mesh:
    """Return ``mesh`` if it is a one-axis ``jax.sharding.Mesh``.

    Args:
      mesh: the mesh to check.
      name: argument name used in error messages.

    Returns:
      ``mesh`` unchanged.

    Raises:
      TypeError: if ``mesh`` is not a ``jax.sharding.Mesh`` (an
        ``AbstractMesh`` has no devices to run on).
      ValueError: if it does not have exactly one axis.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"{name} must be a jax.sharding.Mesh, e.g. "
            f"jax.make_mesh((jax.device_count(),), ('data',)), got "
            f"{type(mesh).__name__}"
        )
    if len(mesh.axis_names) != 1:
        raise ValueError(
            f"{name} must have exactly one axis (samples and matrices are split "
            f"along it), got axes {tuple(mesh.axis_names)} of sizes "
            f"{tuple(mesh.devices.shape)}"
        )
    return mesh


def _pad_to(x: jax.Array, multiple: int, value=0) -> jax.Array:
    """Pad the leading axis of ``x`` with ``value`` to a multiple of ``multiple``."""
    extra = -x.shape[0] % multiple
    if extra == 0:
        return x
    fill = jnp.full((extra,) + x.shape[1:], value, x.dtype)
    return jnp.concatenate([x, fill])


def split_factorization(S: jax.Array, a: jax.Array, *, axis: str, size: int):
    """``scaled_inverse_and_logdet`` with the batch split across a mesh axis.

    Must run inside ``shard_map`` over ``axis``, with ``S`` and ``a`` the same
    on every device. The batch is padded with zero matrices (``I + a * 0`` is
    the identity) to a multiple of ``size``; each device factors its
    contiguous share in one batched Cholesky call, and the results are
    gathered on every device.

    Args:
      S: (..., n, n) Hermitian positive semi-definite matrices.
      a: scales, broadcast against the batch axes of ``S``.
      axis: name of the mesh axis.
      size: number of devices along ``axis``.

    Returns:
      ``(operators, logdets)`` of shapes (..., n, n) and (...), on every device.
    """
    batch, n = S.shape[:-2], S.shape[-1]
    count = math.prod(batch)
    a = _pad_to(jnp.broadcast_to(a, batch).reshape(count), size, 1)
    S = _pad_to(S.reshape(count, n, n), size)
    share = S.shape[0] // size
    start = jax.lax.axis_index(axis) * share
    operators, logdets = scaled_inverse_and_logdet(
        jax.lax.dynamic_slice_in_dim(S, start, share),
        jax.lax.dynamic_slice_in_dim(a, start, share),
    )
    operators = jax.lax.all_gather(operators, axis, tiled=True)[:count]
    logdets = jax.lax.all_gather(logdets, axis, tiled=True)[:count]
    return operators.reshape(batch + (n, n)), logdets.reshape(batch)


def _vector_body(Z, Pi, m_j, eps_sq, eta, lam, *, m, axis, size, use_labels):
    """Per-device vector layer step on a share of the (zero-padded) rows."""
    d = Z.shape[1]
    full, per_class = vector_covariances(Z, Pi)
    stacked = jax.lax.psum(jnp.concatenate([full[None], per_class]), axis)
    safe_m_j = jnp.where(m_j > 0, m_j, 1.0)
    alpha = jnp.asarray(d / (m * eps_sq), Z.dtype)
    scales = jnp.concatenate([alpha[None], d / (safe_m_j * eps_sq)])
    operators, logdets = split_factorization(stacked, scales, axis=axis, size=size)
    C = jnp.where((m_j > 0)[:, None, None], operators[1:], 0.0)
    layer = VectorLayer(E=operators[0], C=C, gamma=m_j / m)
    Z_next, _ = _move(layer, Z, eta, lam, Pi if use_labels else None)
    return layer, Z_next, rates_from_logdets(logdets, m_j, m)


def _circulant_body(
    Yb,
    block_class,
    Pi_blocks,
    m_j,
    eps_sq,
    eta,
    lam,
    weights,
    *,
    m,
    axis,
    size,
    num_positions,
    use_labels,
):
    """Per-device shift-invariant layer step on a share of the packed blocks."""
    stacked = packed_covariances(Yb, block_class, m_j.shape[0])
    stacked = jax.lax.psum(stacked, axis)
    factor = partial(split_factorization, axis=axis, size=size)
    layer, rates = _layer_from_covariances(
        stacked, m_j, m, eps_sq, weights, num_positions, factor=factor
    )
    Yb, _ = packed_move(
        layer.E_hat,
        layer.C_hat,
        layer.gamma,
        Yb,
        weights,
        eta,
        lam,
        Pi_blocks if use_labels else None,
    )
    return layer, Yb, rates


def _run_sharded(body, mesh: Mesh, in_specs, out_specs, *args):
    """``shard_map`` of ``body`` over ``args`` (on an ``Auto`` mesh)."""
    return jax.shard_map(
        body, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
    )(*args)


@partial(jax.jit, static_argnames=("mesh", "use_labels", "signal_shape", "block"))
def _sharded_step(
    Z, Pi, eps_sq, eta, lam, plan=None, *, mesh, use_labels, signal_shape, block
):
    """Sharded counterpart of ``_network._construction_step``."""
    from redunet_jax._guards import layer_health
    from redunet_jax._network import _domain

    (axis,) = mesh.axis_names
    size = mesh.devices.size
    m = Z.shape[0]
    Pi = Pi.astype(jnp.finfo(Z.dtype).dtype)
    m_j, _ = class_counts(Pi)
    split, same = P(axis), P()
    same_everywhere = NamedSharding(mesh, same)
    settings = dict(m=m, axis=axis, size=size, use_labels=use_labels)

    if signal_shape is None:
        body = partial(_vector_body, **settings)
        layer, Z_next, rates = _run_sharded(
            body,
            mesh,
            (split, split, same, same, same, same),
            (same, split, same),
            *(_pad_to(Z, size), _pad_to(Pi, size), m_j, eps_sq, eta, lam),
        )
        Z_next = Z_next[:m]
    else:
        assert plan is not None
        order, inverse, block_class = plan
        weights = jnp.asarray(_bin_weights(signal_shape), Pi.dtype)
        body = partial(
            _circulant_body, num_positions=math.prod(signal_shape), **settings
        )
        layer, Yb, rates = _run_sharded(
            body,
            mesh,
            (split, split, split) + (same,) * 5,
            (same, split, same),
            pack(Z, order, block),
            block_class,
            pack_rows(Pi, order, block),
            m_j,
            eps_sq,
            eta,
            lam,
            weights,
        )
        Z_next = unpack(Yb, inverse)

    health = layer_health(Z, Pi, _domain(signal_shape).sq_norm, operators=layer[:2])
    # Every device gets every moved sample back (an all-gather).
    outputs = (layer, Z_next, rates, health)
    return jax.lax.with_sharding_constraint(outputs, same_everywhere)


def _place(x, sharding: NamedSharding):
    """Put ``x`` on ``sharding`` (host data when it spans several processes)."""
    if not is_concrete(x) or (isinstance(x, jax.Array) and x.sharding == sharding):
        return x
    if not sharding.is_fully_addressable:
        # Every process holds the same value; global arrays are made from
        # host data.
        x = np.asarray(x)
    return jax.device_put(x, sharding)


def sharded_construction_step(
    mesh: Mesh,
    labels,
    *,
    num_classes: int,
    use_labels: bool,
    signal_shape,
    chunk_size: int | None = None,
):
    """A layer step ``step(Z, Pi, eps_sq, eta, lam)`` that runs on ``mesh``.

    It has the signature and the results of the single-device step of
    ``construct``: ``(layer, Z_next, rates, health)``, all replicated on the
    devices of ``mesh``. Inputs are placed on the mesh (replicated) first;
    outputs of a previous step are already there.

    Args:
      mesh: a one-axis mesh (see :func:`check_mesh`).
      labels: (m,) host integer labels (they fix the blocks of
        shift-invariant layers).
      num_classes: number of classes k.
      use_labels: move features with their true memberships.
      signal_shape: ``None`` for vectors, else ``(T,)`` or ``(H, W)``.
      chunk_size: samples per block of the shift-invariant layers.

    Returns:
      The step function.
    """
    mesh = check_mesh(mesh)
    # On an ``Auto`` mesh shardings are not part of the array types, so the
    # results mix freely with arrays of one device (``jax.make_mesh`` makes
    # ``Explicit`` meshes).
    mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,))
    replicated = NamedSharding(mesh, P())
    plan, block = None, None
    if signal_shape is not None:
        blocks = padded_plan(labels, num_classes, mesh.devices.size, chunk_size)
        plan = tuple(_place(np.asarray(a), replicated) for a in blocks[:3])
        block = blocks.block
    step = partial(
        _sharded_step,
        mesh=mesh,
        use_labels=use_labels,
        signal_shape=signal_shape,
        block=block,
    )

    # The memberships and hyperparameters are the same objects at every layer:
    # they are placed on the mesh once.
    placed: dict[int, tuple] = {}

    def place(position, x):
        if position in placed and placed[position][0] is x:
            return placed[position][1]
        on_mesh = _place(x, replicated)
        if is_concrete(x):
            placed[position] = (x, on_mesh)
        return on_mesh

    def sharded_step(Z, Pi, eps_sq, eta, lam):
        args = [place(i, x) for i, x in enumerate((Z, Pi, eps_sq, eta, lam))]
        return step(*args, plan)

    return sharded_step
