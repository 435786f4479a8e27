"""Fine-tuning a constructed ReduNet by back-propagation, with Flax NNX and optax.

Forward construction gives every layer's operators in closed form. Here they
become trainable ``nnx.Param`` arrays and are improved by mini-batch gradient
steps on the rate reduction of the last layer's features, optionally plus a
cross-entropy on the soft memberships ``pihat``. Shift-invariant layers train
their Fourier blocks ``E_hat`` and ``C_hat`` (complex), so they stay
block-circulant and the network stays exactly shift-equivariant.

This is the only module of the package that imports Flax; the result of
:func:`finetune` is a plain :class:`~redunet_jax.ReduNet` that the rest of the
library (``transform``, ``predict``, ``save``) uses without it.

References:
  Chan et al., "ReduNet: A White-box Deep Network from the Principle of
  Maximizing Rate Reduction", JMLR 23 (2022), section 5 (back-propagating
  through a constructed network). JAX returns dL/dx - i dL/dy for a real loss
  of a complex parameter x + iy; optax descends along dL/dx + i dL/dy, so
  complex gradient leaves are conjugated before each update.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from redunet_jax._checks import check_int, check_labels, check_real
from redunet_jax._circulant import CirculantLayer
from redunet_jax._linalg import single_threaded_lapack
from redunet_jax._network import (
    ReduNet,
    _check_input,
    _domain,
    encoded_forward,
)
from redunet_jax._vector import VectorLayer

__all__ = [
    "LayerConstant",
    "ReduNetModule",
    "finetune",
    "rate_reduction_loss",
    "train_step",
]

OPTIMIZERS = ("adam", "sgd")

# Smallest probability whose log enters the cross-entropy: a hard soft-max
# (large lam) drives pihat of other classes to exactly 0.
_PROB_FLOOR = 1e-30


class LayerConstant(nnx.Variable):
    """A per-layer array that fine-tuning keeps fixed (the class proportions gamma).

    Optimizers built with ``wrt=nnx.Param`` never update it.

    Example:
      >>> import jax.numpy as jnp
      >>> gamma = LayerConstant(jnp.array([[0.5, 0.5]]))
      >>> gamma[...].shape, isinstance(gamma, nnx.Param)
      ((1, 2), False)
    """


def _hermitian_partners(signal_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Stored bins whose blocks must be conjugates of another stored bin's.

    A real circulant operator has blocks with ``B[-p] = conj(B[p])``. With the
    rfft layout only the last axis is halved, so the bins of its first column
    (and, for even W, its last column) pair up among themselves: ``(h, c)``
    with ``(-h mod H, c)``; in 1D these are the self-conjugate bins 0 and T/2.

    Returns:
      ``(partner, constrained)``: (F,) int index of each bin's partner and (F,)
      bool mask of the bins that have one.
    """
    W = signal_shape[-1]
    H = math.prod(signal_shape[:-1])
    columns = W // 2 + 1
    rows = np.arange(H)[:, None]
    cols = np.arange(columns)[None, :]
    partner = np.where(
        (cols == 0) | ((W % 2 == 0) & (cols == columns - 1)),
        ((-rows) % H) * columns + cols,
        rows * columns + cols,
    )
    constrained = np.zeros((H, columns), bool)
    constrained[:, 0] = True
    if W % 2 == 0:
        constrained[:, -1] = True
    return partner.reshape(-1), constrained.reshape(-1)


def _real_operator_blocks(B_hat: jax.Array, signal_shape: tuple[int, ...]):
    """Project (..., F, C, C) blocks onto those of a real circulant operator.

    Gradient steps could give a self-conjugate bin (such as p = 0) an
    imaginary part, which no real signal map has. Averaging each constrained
    block with the conjugate of its partner is an orthogonal projection, so
    the gradient of the raw parameters already lies in the constraint set and
    blocks built by construction pass through unchanged.
    """
    partner, constrained = _hermitian_partners(signal_shape)
    mirrored = jnp.conj(jnp.take(B_hat, jnp.asarray(partner), axis=-3))
    mask = jnp.asarray(constrained)[:, None, None]
    return jnp.where(mask, 0.5 * (B_hat + mirrored), B_hat)


class ReduNetModule(nnx.Module):
    """A constructed ReduNet whose layer operators are trainable parameters.

    Vector networks hold ``E`` (L, d, d) and ``C`` (L, k, d, d) as
    ``nnx.Param``; shift-invariant networks hold the complex Fourier blocks
    ``E_hat`` (L, F, C, C) and ``C_hat`` (L, k, F, C, C). The class proportions
    ``gamma`` (L, k) are a :class:`LayerConstant`; ``eta``, ``lam``, ``eps_sq``,
    ``num_classes`` and ``input_shape`` are static attributes.

    Calling the module applies the same map as :func:`~redunet_jax.transform`
    and :func:`~redunet_jax.predict_proba`; see :meth:`__call__`.

    Args:
      net: a network from :func:`~redunet_jax.construct`.

    Raises:
      TypeError: if ``net`` is not a ``ReduNet``.

    Example:
      >>> import jax
      >>> from redunet_jax import construct, transform
      >>> X = jax.random.normal(jax.random.key(0), (20, 3))
      >>> net, Z = construct(X, (X[:, 0] > 0).astype(int), num_classes=2, num_layers=2)
      >>> model = ReduNetModule(net)
      >>> Z_model, pihat = model(X)
      >>> bool(jax.numpy.allclose(Z_model, transform(net, X), atol=1e-6))
      True
    """

    def __init__(self, net: ReduNet):
        if not isinstance(net, ReduNet):
            raise TypeError(f"net must be a ReduNet, got {type(net).__name__}")
        self.eta = net.eta
        self.lam = net.lam
        self.eps_sq = net.eps_sq
        self.num_classes = net.num_classes
        self.input_shape = tuple(net.input_shape)
        self.invariant = net.invariant
        layers = net.layers
        if isinstance(layers, CirculantLayer):
            self.E_hat = nnx.Param(jnp.asarray(layers.E_hat))
            self.C_hat = nnx.Param(jnp.asarray(layers.C_hat))
        else:
            self.E = nnx.Param(jnp.asarray(layers.E))
            self.C = nnx.Param(jnp.asarray(layers.C))
        self.gamma = LayerConstant(jnp.asarray(layers.gamma))

    @classmethod
    def from_network(cls, net: ReduNet) -> ReduNetModule:
        """Return a module holding the operators of ``net`` as parameters."""
        return cls(net)

    @property
    def signal_shape(self) -> tuple[int, ...] | None:
        """``(T,)`` or ``(H, W)`` for shift-invariant networks, else ``None``."""
        return self.input_shape[1:] if self.invariant else None

    def _layers(self) -> VectorLayer | CirculantLayer:
        """The current stacked operators (leading layer axis)."""
        gamma = self.gamma[...]
        if self.invariant:
            shape = self.input_shape[1:]
            E_hat = _real_operator_blocks(self.E_hat[...], shape)
            C_hat = _real_operator_blocks(self.C_hat[...], shape)
            return CirculantLayer(E_hat, C_hat, gamma)
        return VectorLayer(self.E[...], self.C[...], gamma)

    def encoded_forward(self, X: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Apply every layer and keep the features in the layers' domain.

        Args:
          X: (m, *input_shape) inputs (validated by the caller).

        Returns:
          ``(Z, pihat)``: (m, d) features, or (m, C, F) rfft coefficients for
          shift-invariant networks, and the last layer's (m, k) ``pihat``.
        """
        return encoded_forward(
            self._layers(),
            X,
            signal_shape=self.signal_shape,
            eta=self.eta,
            lam=self.lam,
            num_classes=self.num_classes,
        )

    def __call__(self, X: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Map inputs through every layer, as ``transform`` and ``predict_proba``.

        Inputs are scaled to unit norm, moved by each layer in turn (a
        ``lax.scan`` over layers) and, for shift-invariant networks, returned
        from the Fourier domain once at the end.

        Args:
          X: (m, *input_shape) inputs. Not validated here, so that the call
            traces under ``jit`` and ``grad``; the public functions check it.

        Returns:
          ``(Z, pihat)``: (m, *input_shape) output features on the unit sphere
          and the last layer's (m, k) soft memberships.
        """
        Z, pihat = self.encoded_forward(X)
        return _domain(self.signal_shape).decode(Z), pihat

    def to_network(self) -> ReduNet:
        """Return a plain ``ReduNet`` with the current parameters (no Flax needed)."""
        return ReduNet(
            layers=self._layers(),
            eta=self.eta,
            lam=self.lam,
            eps_sq=self.eps_sq,
            num_classes=self.num_classes,
            input_shape=self.input_shape,
        )


def rate_reduction_loss(
    model: ReduNetModule, X: jax.Array, Pi: jax.Array, ce_weight=0.0
) -> tuple[jax.Array, jax.Array]:
    r"""Fine-tuning loss of a mini-batch: negative rate reduction plus cross-entropy.

    .. math::

       L = -\Delta R(Z_L, \Pi) - w \, \tfrac1m \textstyle\sum_i \sum_j
           \Pi_{ij} \log \hat\pi_j(x_i)

    ``Delta R`` is computed on the last layer's features in the layers' own
    domain (vectors, or rfft coefficients with bin weights), with the same
    rate functions as construction: one batched factorization of the (k + 1)
    covariance matrices. A class absent from the batch contributes zero.
    ``log pihat`` is floored at 1e-30, so a saturated soft-max gives a finite
    loss (and no gradient through the floored entries).

    Args:
      model: the network being fine-tuned.
      X: (m, *input_shape) inputs.
      Pi: (m, k) one-hot memberships ``Pi`` of the batch.
      ce_weight: weight ``w`` of the cross-entropy (>= 0).

    Returns:
      ``(loss, delta_r)`` as scalar arrays.

    Raises:
      TypeError, ValueError: if the shapes of ``X`` or ``Pi`` do not fit the
        model or each other (raised by JAX: the inputs are not validated here,
        so that the function traces under ``jit`` and ``grad``;
        :func:`finetune` checks them).

    References:
      ReduNet (JMLR 2022), section 5.

    Example:
      >>> import jax
      >>> from redunet_jax import construct
      >>> X = jax.random.normal(jax.random.key(0), (20, 3))
      >>> y = (X[:, 0] > 0).astype(int)
      >>> net, _ = construct(X, y, num_classes=2, num_layers=2)
      >>> Pi = jax.nn.one_hot(y, 2)
      >>> loss, delta_r = rate_reduction_loss(ReduNetModule(net), X, Pi)
      >>> bool(loss == -delta_r), bool(delta_r > 0)
      (True, True)
      >>> loss_ce, _ = rate_reduction_loss(ReduNetModule(net), X, Pi, ce_weight=1.0)
      >>> bool(loss_ce > loss)  # plus a positive cross-entropy
      True
    """
    Z, pihat = model.encoded_forward(X)
    rates = _domain(model.signal_shape).rates(Z, Pi, model.eps_sq)
    log_pihat = jnp.log(jnp.maximum(pihat, _PROB_FLOOR))
    cross_entropy = -jnp.mean(jnp.sum(Pi * log_pihat, axis=-1))
    return -rates.delta_r + ce_weight * cross_entropy, rates.delta_r


def _conjugate(g):
    # jax.grad of a real loss in z = x + iy gives dL/dx - i dL/dy; optax's
    # descent rules expect dL/dx + i dL/dy.
    return jnp.conj(g) if jnp.iscomplexobj(g) else g


@nnx.jit
def train_step(
    model: ReduNetModule,
    optimizer: nnx.Optimizer,
    X: jax.Array,
    Pi: jax.Array,
    ce_weight: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """One compiled gradient step on a mini-batch; updates ``model`` in place.

    The gradient of :func:`rate_reduction_loss` with respect to the
    ``nnx.Param`` operators is computed, its complex leaves are conjugated
    (JAX's convention is the conjugate of the descent direction that optax
    expects) and ``optimizer`` applies it.

    Args:
      model: the network being fine-tuned.
      optimizer: an ``nnx.Optimizer(model, tx, wrt=nnx.Param)``.
      X: (m, *input_shape) inputs.
      Pi: (m, k) one-hot memberships.
      ce_weight: scalar weight of the cross-entropy.

    Returns:
      ``(loss, delta_r)`` of the batch before the update.

    Raises:
      TypeError, ValueError: if the shapes of ``X`` or ``Pi`` do not fit the
        model or each other (raised by JAX while tracing; the inputs are not
        validated here).

    References:
      ReduNet (JMLR 2022), section 5.

    Example:
      >>> import jax, optax
      >>> from flax import nnx
      >>> from redunet_jax import construct
      >>> X = jax.random.normal(jax.random.key(0), (20, 3))
      >>> y = (X[:, 0] > 0).astype(int)
      >>> net, _ = construct(X, y, num_classes=2, num_layers=2)
      >>> model = ReduNetModule(net)
      >>> optimizer = nnx.Optimizer(model, optax.sgd(1e-3), wrt=nnx.Param)
      >>> Pi = jax.nn.one_hot(y, 2)
      >>> loss, delta_r = train_step(model, optimizer, X, Pi, jax.numpy.asarray(0.0))
      >>> after, _ = rate_reduction_loss(model, X, Pi)
      >>> bool(after < loss)  # one small step down the loss
      True
    """
    grad_fn = nnx.value_and_grad(rate_reduction_loss, has_aux=True)
    (loss, delta_r), grads = grad_fn(model, X, Pi, ce_weight)
    optimizer.update(model, jax.tree.map(_conjugate, grads))
    return loss, delta_r


def _make_optimizer(name, learning_rate: float) -> optax.GradientTransformation:
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def finetune(
    net: ReduNet,
    X,
    labels,
    *,
    epochs: int = 1,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    optimizer: str = "adam",
    ce_weight: float = 0.0,
    seed: int = 0,
    callback: Callable[[int, float, float], None] | None = None,
) -> tuple[ReduNet, dict[str, list[float]]]:
    r"""Fine-tune a constructed network by mini-batch gradient steps on its objective.

    Each step minimizes, on one mini-batch,

    .. math::

       L = -\Delta R(Z_L, \Pi) + w \, \mathrm{CE}(\hat\pi, y)

    where ``Z_L`` are the last layer's features (see
    :func:`rate_reduction_loss`). Every epoch draws a fresh permutation of the
    samples from ``seed`` and cuts it into ``m // batch_size`` batches of
    exactly ``batch_size`` samples; the last ``m % batch_size`` samples of
    each permutation are dropped, so that one compiled step serves every
    batch (over several epochs every sample is used). ``batch_size`` larger
    than ``m`` is clipped to ``m``. Complex gradients of shift-invariant
    layers are conjugated before the optax update; the Fourier blocks stay
    those of a real circulant operator. Cost per step O(L k b d²) for the
    layers plus one (k + 1)-fold factorization (b = batch size).

    Args:
      net: a network from :func:`~redunet_jax.construct`.
      X: (m, *net.input_shape) training inputs.
      labels: (m,) integer labels in ``[0, net.num_classes)``.
      epochs: number of passes over the data (>= 1).
      batch_size: samples per step (>= 1; clipped to m).
      learning_rate: optimizer step size (>= 0; 0 leaves the network as is).
      optimizer: ``"adam"`` or ``"sgd"`` (optax).
      ce_weight: weight ``w`` of the cross-entropy on ``pihat`` (>= 0).
      seed: seed of the batch permutations.
      callback: called as ``callback(step, loss, delta_r)`` with Python floats
        after every step (the values of the batch before its update).

    Returns:
      ``(net, history)``: the fine-tuned plain ``ReduNet`` and a dict with
      per-step lists ``"loss"`` and ``"delta_r"``.

    Raises:
      TypeError: if ``net`` is not a ``ReduNet``, ``callback`` is not callable,
        or an argument has the wrong type.
      ValueError: for inputs of the wrong shape or with non-finite values,
        labels out of range, ``epochs < 1``, ``batch_size < 1``, a negative
        ``learning_rate`` or ``ce_weight``, an unknown ``optimizer``, or a
        non-finite loss during training.

    References:
      ReduNet (JMLR 2022), section 5.

    Example:
      >>> import jax
      >>> from redunet_jax import construct
      >>> X = jax.random.normal(jax.random.key(0), (24, 3))
      >>> y = (X[:, 0] > 0).astype(int)
      >>> net, _ = construct(X, y, num_classes=2, num_layers=2)
      >>> tuned, history = finetune(net, X, y, epochs=2, batch_size=12)
      >>> tuned.num_layers, len(history["loss"])
      (2, 4)
    """
    if not isinstance(net, ReduNet):
        raise TypeError(f"net must be a ReduNet, got {type(net).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    X = _check_input(net, X)
    y = check_labels(labels, "labels", m=X.shape[0], num_classes=net.num_classes)
    epochs = check_int(epochs, "epochs", minimum=1)
    batch_size = min(check_int(batch_size, "batch_size", minimum=1), X.shape[0])
    seed = check_int(seed, "seed", minimum=0)
    learning_rate = check_real(learning_rate, "learning_rate")
    if learning_rate < 0:
        raise ValueError(f"learning_rate must be >= 0, got {learning_rate!r}")
    ce_weight = check_real(ce_weight, "ce_weight")
    if ce_weight < 0:
        raise ValueError(f"ce_weight must be >= 0, got {ce_weight!r}")
    tx = _make_optimizer(optimizer, learning_rate)

    model = ReduNetModule(net)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    Pi = jax.nn.one_hot(y, net.num_classes, dtype=X.dtype)
    weight = jnp.asarray(ce_weight, X.dtype)
    rng = np.random.default_rng(seed)
    steps_per_epoch = X.shape[0] // batch_size
    history: dict[str, list[float]] = {"loss": [], "delta_r": []}

    with single_threaded_lapack():
        for _ in range(epochs):
            order = rng.permutation(X.shape[0])
            for b in range(steps_per_epoch):
                index = jnp.asarray(order[b * batch_size : (b + 1) * batch_size])
                loss, delta_r = train_step(model, opt, X[index], Pi[index], weight)
                loss, delta_r = float(loss), float(delta_r)
                step = len(history["loss"])
                if not np.isfinite(loss):
                    raise ValueError(
                        f"the loss became non-finite at step {step}; try a smaller "
                        "learning_rate"
                    )
                history["loss"].append(loss)
                history["delta_r"].append(delta_r)
                if callback is not None:
                    callback(step, loss, delta_r)
    return model.to_network(), history
