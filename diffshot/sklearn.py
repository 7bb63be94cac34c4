"""scikit-learn estimators over diffshot's methods (``pip install diffshot[sklearn]``).

``FewShotClassifier(method="ptmap", **params)`` wraps any registered method; ``DiffusionClassifier``,
``SimpleShotClassifier`` and ``LabelPropagationClassifier`` are the same with the method fixed and its
parameters in the signature. As in scikit-learn's semi-supervised estimators (``LabelSpreading``), ``fit(X, y)``
takes −1 for unlabelled rows: the labelled rows are the support, the unlabelled ones the queries of one
transductive task, whose labels land in ``transduction_``. ``predict(X)`` runs one task of the fitted support
and the rows of ``X`` as queries (transductive over ``X``: a method that uses the queries sees the whole batch).
``predict_proba`` is softmax(score / ``temperature``). The task runs on the path ``diffshot predict`` takes
(:func:`diffshot.run.predict.task_scores`); a method's parameters are its typed parameters
(``diffshot methods``), checked when ``fit`` runs, so ``clone``, ``GridSearchCV`` and ``Pipeline`` work.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("diffshot.sklearn needs scikit-learn >= 1.6: pip install 'diffshot[sklearn]'") from exc

from diffshot.calibration import DEFAULT_TEMPERATURE
from diffshot.errors import DiffshotError
from diffshot.methods import get_method
from diffshot.methods.base import Param

SHARED = {"temperature": DEFAULT_TEMPERATURE, "index": "auto", "device": "cpu", "base_mean": None}
UNLABELLED = -1


class FewShotClassifier(ClassifierMixin, BaseEstimator):
    """Any diffshot method as a scikit-learn classifier: ``fit(X, y)`` with −1 for unlabelled rows, then predict.

    ``method`` names a registered method; ``params`` are its parameters (``diffshot methods``). ``temperature``
    sets ``predict_proba``'s softmax; ``index`` the kNN index of graph methods (auto|flat|hnsw|ivf|ivfpq);
    ``device`` cpu or cuda; ``base_mean`` [d] the backbone's base-class mean to centre by (default: the mean
    of the labelled rows, as ``diffshot predict`` does without one).
    """

    fixed_method: str | None = None

    def __init__(
        self,
        method: str = "diffusion",
        *,
        temperature: float = DEFAULT_TEMPERATURE,
        index: str = "auto",
        device: str = "cpu",
        base_mean: Any = None,
        **params: Any,
    ) -> None:
        self.method = method
        self.temperature = temperature
        self.index = index
        self.device = device
        self.base_mean = base_mean
        self._given = tuple(params)
        for name, value in params.items():
            setattr(self, name, value)

    def _method_name(self) -> str:
        """The method this estimator runs."""
        return self.fixed_method or self.method

    def _declared(self) -> tuple[Param, ...]:
        """The method's parameters (none while its name is unknown: ``fit`` says why)."""
        name = self._method_name()
        try:
            return get_method(name).declared if isinstance(name, str) else ()
        except DiffshotError:
            return ()

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The estimator's settings and the method's parameters, by name (what ``clone`` rebuilds it from)."""
        params = super().get_params(deep)
        for p in self._declared():
            params.setdefault(p.name, getattr(self, p.name, p.default))
        for name in getattr(self, "_given", ()):
            params.setdefault(name, getattr(self, name))
        return params

    def set_params(self, **params: Any) -> FewShotClassifier:
        """Set settings and method parameters (``method`` first); like ``__init__``, names are checked by ``fit``."""
        if "method" in params and self.fixed_method is None:
            self.method = params.pop("method")
        if self.fixed_method is None:
            for name in [k for k in params if "__" not in k and k not in self.get_params(deep=False)]:
                self._given = (*getattr(self, "_given", ()), name)
                setattr(self, name, params.pop(name))
        return super().set_params(**params)

    def _method_params(self) -> dict[str, Any]:
        """The method's parameter values, as Python scalars (GridSearchCV may hand numpy ones)."""
        values = {p.name: getattr(self, p.name, p.default) for p in self._declared()}
        return {k: v.item() if isinstance(v, np.generic) else v for k, v in values.items()}

    def _run(self) -> Any:
        """The checked run of the method with this estimator's parameters (ValueError naming a bad one)."""
        from diffshot.run.config import method_runs

        known = {p.name for p in self._declared()} | set(SHARED) | {"method"}
        stray = sorted(set(vars(self)) - known - {k for k in vars(self) if k.startswith("_") or k.endswith("_")})
        try:
            if not isinstance(self._method_name(), str):
                raise DiffshotError(f"method must be a method's name, got {self._method_name()!r}")
            method = get_method(self._method_name())
            if stray:
                raise DiffshotError(f"method {method.name} has no parameter {stray[0]!r}")
            return method_runs([(method.name, self._method_params())])[0]
        except DiffshotError as exc:
            raise ValueError(str(exc)) from None

    def fit(self, X: Any, y: Any) -> FewShotClassifier:
        """Keep the labelled rows as the support; label the unlabelled ones (y = −1) as one task: ``transduction_``."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self._run()
        unlabelled = (y == UNLABELLED) if y.dtype.kind in "iuf" else np.zeros(y.shape[0], dtype=bool)
        self.classes_ = np.unique(y[~unlabelled])
        if self.classes_.size < 2:
            found = f"{self.classes_.size} class" + ("es" if self.classes_.size != 1 else "")
            raise ValueError(f"{type(self).__name__} needs labelled rows of at least 2 classes, got {found}")
        self.support_ = np.array(X[~unlabelled], dtype=np.float32)
        self.support_labels_ = np.searchsorted(self.classes_, y[~unlabelled])
        self.transduction_ = y.copy()
        if unlabelled.any():
            self.transduction_[unlabelled] = self.classes_[self._scores(X[unlabelled]).argmax(axis=1)]
        return self

    def _scores(self, X: np.ndarray) -> np.ndarray:
        """Scores [rows, classes] of one task: the fitted support and ``X`` as its queries."""
        from diffshot.features import make_featureset
        from diffshot.run.predict import PredictOptions, task_scores

        order = np.argsort(self.support_labels_, kind="stable")  # class after class, as in episodes
        mean = None if self.base_mean is None else np.asarray(self.base_mean, dtype=np.float32)
        try:
            support = make_featureset(
                self.support_[order], self.support_labels_[order], base_mean=mean, source="the fitted support"
            )
            query = make_featureset(np.array(X, dtype=np.float32), np.zeros(len(X), np.int64), source="X")
            scores, _ = task_scores(
                support, query, self._run(), PredictOptions(self.temperature, self.index), self.device
            )
        except DiffshotError as exc:
            raise ValueError(str(exc)) from None
        return scores

    def predict(self, X: Any) -> np.ndarray:
        """The class of every row of ``X``, from one task of the fitted support and ``X`` as queries."""
        best = self.decision_scores(X).argmax(axis=1)
        return self.classes_[best]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities [rows, classes]: softmax(score / temperature), in the order of ``classes_``."""
        scores = self.decision_scores(X).astype(np.float64) / float(self.temperature)
        scores -= scores.max(axis=1, keepdims=True)
        weights = np.exp(scores)
        return weights / weights.sum(axis=1, keepdims=True)

    def decision_scores(self, X: Any) -> np.ndarray:
        """The method's raw scores [rows, classes] (higher = more likely) of every row of ``X``."""
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        return self._scores(X)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


def classifier_for(method: str, class_name: str) -> type[FewShotClassifier]:
    """A FewShotClassifier subclass for one method, its parameters written out in the signature (as sklearn wants)."""
    declared = get_method(method).declared
    keyword = inspect.Parameter.KEYWORD_ONLY

    def __init__(self: FewShotClassifier, **params: Any) -> None:
        for name, value in params.items():
            setattr(self, name, value)

    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *(inspect.Parameter(name, keyword, default=value) for name, value in SHARED.items()),
            *(inspect.Parameter(p.name, keyword, default=p.default) for p in declared),
        ]
    )

    def wrapped(self: FewShotClassifier, **params: Any) -> None:
        bound = __init__.__signature__.bind(self, **params)  # type: ignore[attr-defined]
        bound.apply_defaults()
        __init__(self, **{k: v for k, v in bound.arguments.items() if k != "self"})

    wrapped.__signature__ = __init__.__signature__  # type: ignore[attr-defined]
    doc = f"diffshot's {method} as a scikit-learn classifier: FewShotClassifier(method={method!r}) with its parameters."
    namespace = {"__init__": wrapped, "fixed_method": method, "__doc__": doc, "__module__": __name__}
    return type(class_name, (FewShotClassifier,), namespace)


DiffusionClassifier = classifier_for("diffusion", "DiffusionClassifier")
SimpleShotClassifier = classifier_for("simpleshot", "SimpleShotClassifier")
LabelPropagationClassifier = classifier_for("labelprop", "LabelPropagationClassifier")

__all__ = [
    "DiffusionClassifier",
    "FewShotClassifier",
    "LabelPropagationClassifier",
    "SimpleShotClassifier",
    "classifier_for",
]
