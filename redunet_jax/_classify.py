"""Read-outs and evaluators of ReduNet features.

The network's own read-out is ``argmax pihat`` (see ``predict``). Here are the
classifiers used in the ReduNet evaluations: nearest subspace, and a linear SVM
and k-nearest neighbours from scikit-learn for comparison with published tables.
"""

from __future__ import annotations

import warnings

import numpy as np

from redunet_jax._checks import check_int


def _flat(Z) -> np.ndarray:
    Z = np.asarray(Z)
    return Z.reshape(Z.shape[0], -1)


def usable_n_comp(n_comp: int, Z) -> int:
    """``n_comp`` capped at D - 1 for features of dimension D (at least 1).

    Args:
      n_comp: requested subspace dimension per class.
      Z: (m, ...) features; D is the size of one flattened sample.

    Returns:
      ``max(1, min(n_comp, D - 1))``.

    Raises:
      TypeError: if ``n_comp`` is not a number.
      ValueError: if ``n_comp`` cannot be read as an integer.

    Example:
      >>> import numpy as np
      >>> usable_n_comp(10, np.zeros((5, 3))), usable_n_comp(2, np.zeros((5, 8)))
      (2, 2)
    """
    return max(1, min(int(n_comp), int(np.prod(np.shape(Z)[1:])) - 1))


def _check_features(Z, labels, name: str, *, num_classes: int):
    """Flat float64 features (m, D) and integer labels in [0, num_classes)."""
    check_int(num_classes, "num_classes", minimum=2)
    Z = _flat(Z).astype(np.float64)
    if not np.isfinite(Z).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    labels = np.asarray(labels)
    if labels.shape != (Z.shape[0],):
        raise ValueError(
            f"labels must have shape ({Z.shape[0]},) to match {name}, "
            f"got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        if not (
            np.issubdtype(labels.dtype, np.floating)
            and np.all(labels == np.round(labels))
        ):
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, num_classes={num_classes})")
    return Z, labels


def shift_invariant_features(Z) -> np.ndarray:
    """Moduli of the orthonormal rfft coefficients, flattened: (m, C * F).

    Circularly shifting a signal multiplies each coefficient by a unit phase,
    so these features are exactly invariant to shifts of (m, C, T) or
    (m, C, H, W) features. Classifiers fitted on them (nearest subspace, SVM,
    kNN) give shift-invariant predictions, unlike the same classifiers on the
    signals themselves.

    Args:
      Z: (m, C, T) or (m, C, H, W) real features.

    Returns:
      (m, C * F) moduli (NumPy), F = T // 2 + 1 or H * (W // 2 + 1).

    Raises:
      TypeError: if ``Z`` is not a real numeric array.
      ValueError: if ``Z`` has the wrong number of axes, a signal axis shorter
        than 2, or non-finite values.

    Example:
      >>> import numpy as np
      >>> Z = np.random.default_rng(0).standard_normal((2, 3, 8))
      >>> a = shift_invariant_features(Z)
      >>> b = shift_invariant_features(np.roll(Z, 3, axis=-1))
      >>> a.shape, bool(np.allclose(a, b, atol=1e-5))
      ((2, 15), True)
    """
    from redunet_jax._fourier import to_fourier

    return np.abs(np.asarray(to_fourier(Z))).reshape(len(Z), -1)


def fit_nearest_subspace(
    Z, labels, *, num_classes: int, n_comp: int = 10
) -> np.ndarray:
    """Top ``n_comp`` right singular vectors of each class's features.

    Args:
      Z: (m, ...) training features (flattened per sample).
      labels: (m,) integer labels in ``[0, num_classes)``.
      num_classes: number of classes k.
      n_comp: dimension of each class subspace (10 for digits, 1 for Gaussian
        mixtures).

    Returns:
      (k, D, n_comp) orthonormal bases; a class with fewer samples than
      ``n_comp`` is padded with zero columns, an absent class has a zero basis.

    Raises:
      ValueError: if ``n_comp`` is not in ``[1, D - 1]`` (subspaces as large as
        the whole space leave no residual and cannot separate classes), if
        the features and labels disagree, labels lie outside
        ``[0, num_classes)`` or the features are not finite.
      TypeError: if the labels are not integers.

    Example:
      >>> import numpy as np
      >>> Z = np.array([[1, 0, 0], [2, 0, 0.1], [0, 1, 0], [0, -3, 0]])
      >>> bases = fit_nearest_subspace(Z, [0, 0, 1, 1], num_classes=2, n_comp=1)
      >>> bases.shape
      (2, 3, 1)
      >>> np.abs(bases[1, :, 0]).round(3).tolist()  # class 1 spans the second axis
      [0.0, 1.0, 0.0]
    """
    Z, labels = _check_features(Z, labels, "Z", num_classes=num_classes)
    n_comp = check_int(n_comp, "n_comp", minimum=1)
    D = Z.shape[1]
    if n_comp >= D:
        raise ValueError(
            f"n_comp must be < feature dimension {D} (a class subspace of the whole "
            f"space separates nothing), got {n_comp}"
        )
    bases = np.zeros((num_classes, D, n_comp))
    for j in range(num_classes):
        Z_j = Z[labels == j]
        if len(Z_j) == 0:
            continue
        _, _, Vt = np.linalg.svd(Z_j, full_matrices=False)
        r = min(n_comp, Vt.shape[0])
        bases[j, :, :r] = Vt[:r].T
    return bases


def predict_nearest_subspace(bases: np.ndarray, Z) -> np.ndarray:
    """Class whose subspace leaves the smallest residual ``||(I - U U^T) z||``.

    Args:
      bases: (k, D, n_comp) orthonormal class bases ``U_j`` from
        :func:`fit_nearest_subspace`.
      Z: (n, ...) features to classify, D values per sample once flattened.

    Returns:
      (n,) int predicted labels.

    Raises:
      ValueError: if ``bases`` is not 3-dimensional or ``Z`` does not have D
        features per sample.

    Example:
      >>> import numpy as np
      >>> Z = np.array([[1, 0, 0], [2, 0, 0.1], [0, 1, 0], [0, -3, 0]])
      >>> bases = fit_nearest_subspace(Z, [0, 0, 1, 1], num_classes=2, n_comp=1)
      >>> predict_nearest_subspace(bases, [[0.5, 0.1, 0.0], [0.2, -1.0, 0.3]]).tolist()
      [0, 1]
    """
    Z = _flat(Z).astype(np.float64)
    if bases.ndim != 3 or Z.shape[1] != bases.shape[1]:
        raise ValueError(
            f"Z has {Z.shape[1]} features per sample, the bases expect {bases.shape[1]}"
        )
    projections = np.einsum("kdc,md->mkc", bases, Z)
    residual = np.sum(Z * Z, axis=1)[:, None] - np.sum(projections**2, axis=-1)
    return np.argmin(residual, axis=1)


def nearest_subspace(
    Z_train, y_train, Z_test, *, num_classes: int, n_comp: int = 10
) -> np.ndarray:
    """Fit nearest-subspace bases on training features and predict test labels.

    Args:
      Z_train: (m, ...) training features.
      y_train: (m,) training labels.
      Z_test: (n, ...) features to classify.
      num_classes: number of classes k.
      n_comp: subspace dimension per class.

    Returns:
      (n,) predicted labels.

    Raises:
      ValueError: as :func:`fit_nearest_subspace` and
        :func:`predict_nearest_subspace`.
      TypeError: if the labels are not integers.

    Example:
      >>> import numpy as np
      >>> Z = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, -1.0]])
      >>> nearest_subspace(Z, [0, 0, 1, 1], [[3.0, 0.2], [0.0, -2.0]],
      ...                  num_classes=2, n_comp=1).tolist()
      [0, 1]
    """
    bases = fit_nearest_subspace(
        Z_train, y_train, num_classes=num_classes, n_comp=n_comp
    )
    return predict_nearest_subspace(bases, Z_test)


def evaluate(
    Z_train,
    y_train,
    Z_test,
    y_test,
    *,
    num_classes: int,
    n_comp: int = 10,
    classifiers: tuple[str, ...] = ("nearest_subspace", "svm", "knn"),
) -> dict[str, dict[str, float]]:
    """Accuracies of the standard classifiers fitted on training features.

    ``svm`` is scikit-learn's ``LinearSVC``; ``knn`` is ``KNeighborsClassifier``
    with k = 5 and the cosine metric.

    Args:
      Z_train: (m, ...) training features.
      y_train: (m,) training labels.
      Z_test: (n, ...) test features.
      y_test: (n,) test labels.
      num_classes: number of classes k.
      n_comp: subspace dimension for the nearest-subspace classifier.
      classifiers: which of ``nearest_subspace``, ``svm``, ``knn`` to run.

    Returns:
      ``{"train": {name: accuracy}, "test": {name: accuracy}}``.

    Raises:
      ValueError: for an unknown classifier name, features and labels of
        different lengths, features with NaN or infinite values, training and
        test features of different sizes, labels outside
        ``[0, num_classes)`` or a bad ``n_comp``.
      TypeError: if the labels are not integers.

    Example:
      >>> import numpy as np
      >>> y = np.repeat([0, 1], 10)
      >>> Z = np.eye(3)[y] + 0.05 * np.random.default_rng(0).standard_normal((20, 3))
      >>> evaluate(Z, y, Z[::-1], y[::-1], num_classes=2, n_comp=1)["test"]
      {'nearest_subspace': 1.0, 'svm': 1.0, 'knn': 1.0}
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import LinearSVC

    known = {"nearest_subspace", "svm", "knn"}
    if isinstance(classifiers, str):
        classifiers = (classifiers,)
    unknown = set(classifiers) - known
    if unknown:
        raise ValueError(
            f"classifiers must be among {sorted(known)}, got {sorted(unknown)}"
        )
    A, y_a = _check_features(Z_train, y_train, "Z_train", num_classes=num_classes)
    B, y_b = _check_features(Z_test, y_test, "Z_test", num_classes=num_classes)
    if A.shape[1] != B.shape[1]:
        raise ValueError(
            f"Z_train and Z_test must have the same features per sample, got "
            f"{A.shape[1]} and {B.shape[1]}"
        )
    result: dict[str, dict[str, float]] = {"train": {}, "test": {}}
    for name in classifiers:
        if name == "nearest_subspace":
            bases = fit_nearest_subspace(A, y_a, num_classes=num_classes, n_comp=n_comp)
            guess_a = predict_nearest_subspace(bases, A)
            guess_b = predict_nearest_subspace(bases, B)
        else:
            if name == "svm":
                model = LinearSVC(random_state=0, max_iter=5000)
            else:
                model = KNeighborsClassifier(
                    n_neighbors=min(5, len(A)), metric="cosine"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(A, y_a)
            guess_a, guess_b = model.predict(A), model.predict(B)
        result["train"][name] = float(np.mean(guess_a == y_a))
        result["test"][name] = float(np.mean(guess_b == y_b))
    return result
