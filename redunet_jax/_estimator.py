"""A scikit-learn style estimator over ``construct`` / ``transform``."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from redunet_jax._classify import (
    fit_nearest_subspace,
    predict_nearest_subspace,
    usable_n_comp,
)
from redunet_jax._network import construct, predict, transform


def _as_real_array(X, name: str) -> np.ndarray:
    """Dense float32 array; complex, sparse and object input is rejected."""
    if hasattr(X, "toarray"):
        raise TypeError(f"{name} must be a dense array; sparse input is not supported")
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {X.dtype}")
    return X.astype(np.float32)


class ReduNetClassifier(ClassifierMixin, TransformerMixin, BaseEstimator):
    """ReduNet classifier with the scikit-learn estimator interface.

    ``fit`` constructs the network in closed form; ``transform`` returns the
    output features; ``predict`` uses the chosen read-out. It follows the
    ``get_params``/``set_params`` conventions, so it works in ``Pipeline``,
    ``GridSearchCV`` and ``cross_val_score``.

    Args:
      num_layers: number of layers L.
      eta: step size.
      eps_sq: distortion ``ε²``.
      lam: inverse temperature of the soft membership.
      invariant: shift-invariant layers for signals (m, C, T) or (m, C, H, W).
      readout: ``"nearest_subspace"`` (default) or ``"pihat"`` (the network's own
        ``argmax pihat``).
      n_comp: subspace dimension of the nearest-subspace read-out, capped at
        d - 1 for d features per sample.
      finetune_epochs: epochs of back-propagation fine-tuning of delta R after
        the forward construction (0: none; needs flax and optax).
      finetune_learning_rate: Adam learning rate of the fine-tuning.
      finetune_batch_size: mini-batch size of the fine-tuning.

    Example:
      >>> from sklearn.datasets import load_digits
      >>> from sklearn.model_selection import cross_val_score
      >>> X, y = load_digits(return_X_y=True)
      >>> clf = ReduNetClassifier(num_layers=5)
      >>> float(cross_val_score(clf, X[:300], y[:300], cv=2).mean()) > 0.8
      True
    """

    def __init__(
        self,
        num_layers: int = 30,
        *,
        eta: float = 0.5,
        eps_sq: float = 0.5,
        lam: float = 500.0,
        invariant: bool = False,
        readout: str = "nearest_subspace",
        n_comp: int = 10,
        finetune_epochs: int = 0,
        finetune_learning_rate: float = 1e-3,
        finetune_batch_size: int = 256,
    ):
        self.num_layers = num_layers
        self.eta = eta
        self.eps_sq = eps_sq
        self.lam = lam
        self.invariant = invariant
        self.readout = readout
        self.n_comp = n_comp
        self.finetune_epochs = finetune_epochs
        self.finetune_learning_rate = finetune_learning_rate
        self.finetune_batch_size = finetune_batch_size

    def fit(self, X, y):
        """Construct the network on ``X`` (m, d) (or signals) with labels ``y`` (m,)."""
        if self.readout not in ("nearest_subspace", "pihat"):
            raise ValueError(
                f"readout must be 'nearest_subspace' or 'pihat', got {self.readout!r}"
            )
        X = _as_real_array(X, "X")
        y = np.asarray(y)
        check_classification_targets(y)
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinite values")
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"y must contain at least 2 classes, got {len(self.classes_)}"
            )
        self.net_, Z = construct(
            X,
            encoded,
            num_classes=len(self.classes_),
            num_layers=self.num_layers,
            eta=self.eta,
            eps_sq=self.eps_sq,
            lam=self.lam,
            invariant=self.invariant,
        )
        if isinstance(self.finetune_epochs, bool) or not (
            isinstance(self.finetune_epochs, int) and self.finetune_epochs >= 0
        ):
            raise ValueError(
                f"finetune_epochs must be an integer >= 0, got {self.finetune_epochs!r}"
            )
        if self.finetune_epochs:
            from redunet_jax.nnx import finetune

            self.net_, self.finetune_history_ = finetune(
                self.net_,
                X,
                encoded,
                epochs=self.finetune_epochs,
                batch_size=self.finetune_batch_size,
                learning_rate=self.finetune_learning_rate,
            )
            Z = transform(self.net_, X)
        self.n_features_in_ = int(np.prod(X.shape[1:]))
        if self.readout == "nearest_subspace":
            n_comp = usable_n_comp(self.n_comp, Z)
            self.bases_ = fit_nearest_subspace(
                Z, encoded, num_classes=len(self.classes_), n_comp=n_comp
            )
        return self

    def _check_fitted(self):
        check_is_fitted(self, "net_")

    def transform(self, X):
        """Output features of the constructed network, of the shape of ``X``."""
        self._check_fitted()
        return np.asarray(transform(self.net_, _as_real_array(X, "X")))

    def predict(self, X):
        """Predicted labels (m,) in the original label set."""
        self._check_fitted()
        X = _as_real_array(X, "X")
        if self.readout == "pihat":
            index = np.asarray(predict(self.net_, X))
        else:
            index = predict_nearest_subspace(self.bases_, transform(self.net_, X))
        return self.classes_[index]
