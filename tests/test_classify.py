import numpy as np
import pytest
from reference import blobs
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from redunet_jax import (
    ReduNetClassifier,
    evaluate,
    fit_nearest_subspace,
    nearest_subspace,
)


def brute_force_nearest_subspace(Z_train, y_train, Z_test, k, n_comp):
    guesses = []
    for z in Z_test:
        residuals = []
        for j in range(k):
            _, _, Vt = np.linalg.svd(Z_train[y_train == j])
            U = Vt[:n_comp].T
            residuals.append(np.linalg.norm(z - U @ (U.T @ z)))
        guesses.append(int(np.argmin(residuals)))
    return np.array(guesses)


def test_nearest_subspace_matches_brute_force():
    X, y = blobs(15, 6, 3, seed=0, spread=1.0)
    T, _ = blobs(5, 6, 3, seed=9, spread=2.0)
    got = nearest_subspace(X, y, T, num_classes=3, n_comp=2)
    np.testing.assert_array_equal(got, brute_force_nearest_subspace(X, y, T, 3, 2))


def test_nearest_subspace_small_and_absent_classes():
    X = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    bases = fit_nearest_subspace(X, [0, 1], num_classes=3, n_comp=2)
    assert bases.shape == (3, 3, 2)
    assert np.all(bases[2] == 0)
    with pytest.raises(ValueError, match="n_comp"):
        fit_nearest_subspace(X, [0, 1], num_classes=2, n_comp=4)


def test_evaluate_reports_every_classifier_per_split():
    X, y = blobs(20, 5, 3, seed=1)
    result = evaluate(X, y, X, y, num_classes=3, n_comp=2)
    assert set(result) == {"train", "test"}
    for split in result.values():
        assert set(split) == {"nearest_subspace", "svm", "knn"}
        assert all(0.0 <= v <= 1.0 for v in split.values())
    assert result["test"]["svm"] > 0.9
    with pytest.raises(ValueError, match="classifiers"):
        evaluate(X, y, X, y, num_classes=3, classifiers=("forest",))


def test_classifier_follows_sklearn_conventions():
    X, y = blobs(20, 6, 3, seed=2)
    labels = np.array(["a", "b", "c"])[y]
    clf = ReduNetClassifier(num_layers=4, n_comp=2)
    assert clf.get_params()["num_layers"] == 4
    clf.set_params(eps_sq=0.3)
    assert clone(clf).get_params()["eps_sq"] == 0.3
    clf.fit(X, labels)
    assert set(clf.predict(X)) <= {"a", "b", "c"}
    assert clf.transform(X).shape == X.shape
    assert clf.score(X, labels) > 0.9
    pihat = ReduNetClassifier(num_layers=4, readout="pihat").fit(X, labels)
    assert pihat.score(X, labels) > 0.9


def test_classifier_in_pipeline_and_cross_validation():
    X, y = blobs(20, 6, 3, seed=3)
    pipe = make_pipeline(StandardScaler(), ReduNetClassifier(num_layers=3, n_comp=2))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.9


def test_classifier_errors():
    X, y = blobs(5, 3, 2)
    with pytest.raises(ValueError, match="not fitted"):
        ReduNetClassifier().predict(X)  # NotFittedError is a ValueError
    with pytest.raises(ValueError, match="readout"):
        ReduNetClassifier(readout="svm").fit(X, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ReduNetClassifier().fit(X, np.zeros(len(X)))


def test_nearest_subspace_rejects_subspaces_as_large_as_the_space():
    X, y = blobs(10, 3, 2)
    with pytest.raises(ValueError, match="n_comp must be < feature dimension 3"):
        fit_nearest_subspace(X, y, num_classes=2, n_comp=3)
    # the estimator caps its default n_comp at d - 1 instead of failing
    clf = ReduNetClassifier(num_layers=2).fit(X, y)
    assert clf.bases_.shape == (2, 3, 2) and clf.score(X, y) > 0.8


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(y_train=np.zeros(3, int)), ValueError, "labels must have shape"),
        (dict(y_train=None), ValueError, "labels must have shape"),
        (dict(Z_test=np.ones((4, 7))), ValueError, "same features per sample"),
        (dict(y_test=np.full(4, 9)), ValueError, r"labels must lie in \[0"),
        (dict(y_test=np.full(4, 0.5)), TypeError, "labels must be integers"),
        (dict(Z_train=np.full((20, 5), np.nan)), ValueError, "Z_train contains NaN"),
    ],
)
def test_evaluate_rejects_inconsistent_input(change, error, message):
    X, y = blobs(10, 5, 2)
    args = dict(Z_train=X, y_train=y, Z_test=X[:4], y_test=y[:4])
    args.update(change)
    with pytest.raises(error, match=message):
        evaluate(*args.values(), num_classes=2, n_comp=2)


def test_classifier_rejects_complex_and_nan_targets():
    X, y = blobs(5, 3, 2)
    with pytest.raises(TypeError, match="real numeric"):
        ReduNetClassifier(num_layers=1).fit(X * 1j, y)
    with pytest.raises(ValueError):
        ReduNetClassifier(num_layers=1).fit(X, np.where(y == 0, np.nan, 1.0))


def test_classifier_with_finetuning():
    X, y = blobs(20, 6, 3, seed=4)
    plain = ReduNetClassifier(num_layers=3, n_comp=2).fit(X, y)
    tuned = ReduNetClassifier(
        num_layers=3, n_comp=2, finetune_epochs=2, finetune_batch_size=30
    ).fit(X, y)
    assert len(tuned.finetune_history_["loss"]) == 4
    assert not np.allclose(tuned.transform(X), plain.transform(X))
    assert tuned.score(X, y) > 0.9
