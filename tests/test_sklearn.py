"""diffshot.sklearn: fit(X, y) with −1 unlabelled, transduction_, clone/GridSearchCV/Pipeline, sklearn's own checks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from diffshot.features import FeatureSet
from diffshot.methods import get_method
from diffshot.sklearn import DiffusionClassifier, FewShotClassifier, LabelPropagationClassifier, SimpleShotClassifier
from tests.conftest import BANKING77, shared_file

TRANSDUCTIVE = (
    "transductive: predict(X) runs one task whose queries are all of X, so a subset (or a reordering, up to "
    "floating-point order) of X is another task"
)
ORDER_SENSITIVE = {"ptmap"}  # its iterations sum over the queries: a reordering moves the scores by ~1e-9
MINUS_ONE = "−1 marks an unlabelled row (LabelSpreading's convention), so a −1/1 binary target has one labelled class"


def expected_failures(estimator: FewShotClassifier) -> dict[str, str]:
    """The sklearn checks that cannot apply to a transductive, semi-supervised few-shot estimator, with the reason."""
    failures = {"check_classifiers_classes": MINUS_ONE}
    if get_method(estimator._method_name()).transductive:
        failures["check_methods_subset_invariance"] = TRANSDUCTIVE
    if estimator._method_name() in ORDER_SENSITIVE:
        failures["check_methods_sample_order_invariance"] = TRANSDUCTIVE
    if estimator.fixed_method is None:
        generic = (
            "FewShotClassifier takes the method's parameters as keyword arguments (**params); the per-method "
            "classes (DiffusionClassifier, classifier_for(name)) declare them in the signature and pass this check"
        )
        failures["check_no_attributes_set_in_init"] = generic
    return failures


@parametrize_with_checks(
    [SimpleShotClassifier(), DiffusionClassifier(), FewShotClassifier("ptmap")],
    expected_failed_checks=expected_failures,
)
def test_sklearn_checks(estimator: FewShotClassifier, check: object) -> None:
    check(estimator)  # type: ignore[operator]


def blobs(n: int = 300, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes in 16-d (hard enough for diffusion to matter)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    return (rng.normal(size=(classes, 16))[labels] + 0.8 * rng.normal(size=(n, 16))).astype(np.float32), labels


def test_fit_with_unlabelled_rows_fills_transduction() -> None:
    X, y = blobs()
    partial = y.copy()
    partial[5:] = -1
    partial[np.unique(y, return_index=True)[1]] = y[np.unique(y, return_index=True)[1]]  # one row of each class
    model = DiffusionClassifier().fit(X, partial)
    np.testing.assert_array_equal(model.classes_, np.arange(5))
    kept = partial != -1
    np.testing.assert_array_equal(model.transduction_[kept], y[kept])
    assert (model.transduction_ != -1).all()
    accuracy = (model.transduction_[~kept] == y[~kept]).mean()
    assert accuracy > 0.6, accuracy
    proba = model.predict_proba(X[~kept])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(model.classes_[proba.argmax(axis=1)], model.transduction_[~kept])


def test_string_classes_and_the_estimator_interface() -> None:
    X, y = blobs()
    names = np.array(["ant", "bee", "cat", "dog", "eel"])[y]
    model = SimpleShotClassifier().fit(X[:100], names[:100])
    assert model.classes_.tolist() == ["ant", "bee", "cat", "dog", "eel"]
    assert model.score(X[100:], names[100:]) > 0.8
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(X[100:]), model.predict(X[100:]))


def test_params_come_from_the_method_and_clone_keeps_them() -> None:
    declared = {p.name for p in get_method("diffusion").declared}
    assert declared <= set(DiffusionClassifier().get_params())
    model = DiffusionClassifier(layers=3, n_top=5)
    copy = clone(model)
    assert copy.get_params()["layers"] == 3 and copy.get_params()["n_top"] == 5
    generic = FewShotClassifier("ptmap", lam=5.0)
    assert clone(generic).get_params()["lam"] == 5.0
    generic.set_params(method="tim", steps=10)
    assert generic.get_params()["method"] == "tim" and generic.get_params()["steps"] == 10
    X, y = blobs(60)
    with pytest.raises(ValueError, match=r"diffusion\.layers"):
        DiffusionClassifier(layers=-1).fit(X, y)
    with pytest.raises(ValueError, match="no parameter 'nonsense'"):
        FewShotClassifier("diffusion", nonsense=1).fit(X, y)
    with pytest.raises(ValueError, match="unknown method"):
        FewShotClassifier("nope").fit(X, y)


def test_grid_search_and_pipeline() -> None:
    X, y = blobs(200)
    search = GridSearchCV(DiffusionClassifier(), {"layers": [0, 6], "step_size": [0.25, 0.5]}, cv=2)
    search.fit(X, y)
    assert set(search.best_params_) == {"layers", "step_size"}
    assert search.cv_results_["mean_test_score"].shape == (4,)
    pipeline = make_pipeline(StandardScaler(), LabelPropagationClassifier()).fit(X[:100], y[:100])
    assert pipeline.score(X[100:], y[100:]) > 0.7


def test_banking77_novel_split_matches_predict(banking77: FeatureSet) -> None:
    """On real features, the estimator's transduction is what `diffshot predict` labels (same task, same path)."""
    from diffshot.features import make_featureset
    from diffshot.run.predict import predict

    novel = banking77.select_split("novel")
    shots = np.concatenate([np.flatnonzero(novel.labels == c)[:5] for c in range(novel.num_classes)])
    y = np.full(novel.num_rows, -1)
    y[shots] = novel.labels[shots]
    model = DiffusionClassifier(base_mean=banking77.base_mean).fit(novel.features, y)
    queries = np.flatnonzero(y == -1)
    support = make_featureset(novel.features[shots], novel.labels[shots], base_mean=banking77.base_mean)
    query = make_featureset(novel.features[queries], np.zeros(queries.size, np.int64))
    expected = predict(support, query, "diffusion").labels
    np.testing.assert_array_equal(model.transduction_[queries], expected)
    accuracy = (model.transduction_[queries] == novel.labels[queries]).mean()
    assert accuracy > 0.7, accuracy


@pytest.fixture(scope="module")
def banking77() -> FeatureSet:
    from diffshot.features import load_features

    return load_features(shared_file(BANKING77))
