"""A scikit-learn style estimator over ``construct`` / ``transform``."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin

from redunet_jax._classify import fit_nearest_subspace, predict_nearest_subspace
from redunet_jax._network import construct, predict, transform


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
      n_comp: subspace dimension of the nearest-subspace read-out.

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
    ):
        self.num_layers = num_layers
        self.eta = eta
        self.eps_sq = eps_sq
        self.lam = lam
        self.invariant = invariant
        self.readout = readout
        self.n_comp = n_comp

    def fit(self, X, y):
        """Construct the network on ``X`` (m, d) (or signals) with labels ``y`` (m,)."""
        if self.readout not in ("nearest_subspace", "pihat"):
            raise ValueError(
                f"readout must be 'nearest_subspace' or 'pihat', got {self.readout!r}"
            )
        X = np.asarray(X, dtype=np.float32)
        self.classes_, encoded = np.unique(np.asarray(y), return_inverse=True)
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
        self.n_features_in_ = int(np.prod(X.shape[1:]))
        if self.readout == "nearest_subspace":
            n_comp = min(self.n_comp, self.n_features_in_)
            self.bases_ = fit_nearest_subspace(
                Z, encoded, num_classes=len(self.classes_), n_comp=n_comp
            )
        return self

    def _check_fitted(self):
        if not hasattr(self, "net_"):
            raise ValueError("this ReduNetClassifier is not fitted yet; call fit first")

    def transform(self, X):
        """Output features of the constructed network, of the shape of ``X``."""
        self._check_fitted()
        return np.asarray(transform(self.net_, np.asarray(X, dtype=np.float32)))

    def predict(self, X):
        """Predicted labels (m,) in the original label set."""
        self._check_fitted()
        X = np.asarray(X, dtype=np.float32)
        if self.readout == "pihat":
            index = np.asarray(predict(self.net_, X))
        else:
            index = predict_nearest_subspace(self.bases_, transform(self.net_, X))
        return self.classes_[index]
