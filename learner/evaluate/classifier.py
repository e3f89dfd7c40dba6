"""The probe on frozen change features: standardisation + a classifier (logistic regression
with balanced class weights, its patient-grouped cross-validated version, or a small MLP)."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_sample_weight

from learner.errors import ConfigError, DataError

CLASSIFIERS = ("logreg", "logreg-cv", "mlp")


# logreg-cv's grid of inverse regularisation strengths, and its most patient folds.
CV_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))


CV_FOLDS = 5


def build_classifier(name: str, seed: int = 0, groups: npt.ArrayLike | None = None) -> Pipeline:
    """Standardisation + classifier, the probe on frozen features.

    Args:
        name: ``"logreg"``: multinomial logistic regression (lbfgs fits the multinomial
            loss for 3 classes) with balanced class weights and C = 1; ``"logreg-cv"``: the
            same with C chosen from :data:`CV_CS` by balanced accuracy in folds of *patients*
            (``groups``; at most :data:`CV_FOLDS`), refitted on all rows; ``"mlp"``: one
            hidden layer of 64 units. ``MLPClassifier`` has no ``class_weight``:
            :func:`evaluate_change` passes balanced per-sample weights instead where
            scikit-learn supports them.
        seed: seeds the MLP's initialisation.
        groups: (N,) the patient of each training row; ``logreg-cv`` only, required there.

    Returns:
        An unfitted ``Pipeline(scale, clf)``.
    """
    clf: LogisticRegression | MLPClassifier
    if name == "logreg":
        clf = LogisticRegression(class_weight="balanced", max_iter=2000)
    elif name == "logreg-cv":
        if groups is None:
            raise ConfigError("classifier 'logreg-cv' needs the patient of each training pair")
        folds = patient_folds(groups, "classifier 'logreg-cv'", "C; use classifier logreg")
        clf = LogisticRegressionCV(
            Cs=list(CV_CS),
            cv=folds,
            scoring="balanced_accuracy",
            class_weight="balanced",
            max_iter=2000,
            **_cv_quiet_options(),
        )
    elif name == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=1000, random_state=seed)
    else:
        raise ConfigError(f"classifier={name!r} is not known; use one of {list(CLASSIFIERS)}")
    return Pipeline([("scale", StandardScaler()), ("clf", clf)])


def patient_folds(
    groups: npt.ArrayLike, who: str, choice: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds of *patients* (at most :data:`CV_FOLDS`) over training rows for choosing a
    setting; ``who`` and ``choice`` word the error when fewer than 2 patients leave no folds.

    Raises:
        DataError: training pairs from fewer than 2 patients.
    """
    patients = np.asarray(groups).ravel()
    n_folds = min(CV_FOLDS, len(np.unique(patients)))
    if n_folds < 2:
        raise DataError(f"{who} needs training pairs from at least 2 patients to choose {choice}")
    return list(GroupKFold(n_splits=n_folds).split(patients, groups=patients))


def _cv_quiet_options() -> dict[str, Any]:
    """Options newer scikit-learn releases ask for explicitly (an L2 penalty, the simplified
    fitted attributes); older ones have neither and mean the same by default."""
    params = inspect.signature(LogisticRegressionCV.__init__).parameters
    options: dict[str, Any] = {}
    if "l1_ratios" in params:
        options["l1_ratios"] = (0.0,)
    if "use_legacy_attributes" in params:
        options["use_legacy_attributes"] = False
    return options


def fit_classifier(model: Pipeline, x: np.ndarray, y: np.ndarray, notes: list[str]) -> Pipeline:
    """Fit, balancing classes, and record convergence warnings as one line each."""
    clf = model.named_steps["clf"]
    params: dict[str, Any] = {}
    if isinstance(clf, MLPClassifier):
        if "sample_weight" in inspect.signature(clf.fit).parameters:
            params["clf__sample_weight"] = compute_sample_weight("balanced", y)
        else:
            notes.append(
                "this scikit-learn's MLPClassifier takes no sample weights: classes unbalanced"
            )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, **params)
    for item in caught:
        if "converge" in str(item.message).lower():
            notes.append(f"{type(clf).__name__} did not converge; results may be unstable")
            break
    return model


def chosen_c(model: Pipeline) -> float | None:
    """The inverse regularisation strength chosen in inner folds (``logreg-cv``, or the
    logistic probe of ``eval.pca: auto``, which records it on the pipeline); None for a probe
    whose C was fixed."""
    chosen = getattr(model, "chosen_c_", None)
    if chosen is not None:
        return float(chosen)
    clf = model.named_steps["clf"]
    if not isinstance(clf, LogisticRegressionCV):
        return None
    return float(np.ravel(clf.C_)[0])


# eval.pca's value for the low-capacity probe whose k and C are chosen in inner folds.
AUTO_PCA = "auto"
# eval.pca: auto's candidate numbers of principal axes (each at most what the data allow).
AUTO_PCA_KS = (2, 4, 8, 16, 32)


def select_low_capacity(
    candidates: dict[int, np.ndarray], y: np.ndarray, groups: npt.ArrayLike
) -> tuple[int, float, float]:
    """Choose the number of principal axes k and the logistic C of the low-capacity probe
    (``eval.pca: auto``) by balanced accuracy in folds of *training patients*.

    Args:
        candidates: k -> (N, F_k) training pair features read from k principal axes.
        y: (N,) training labels.
        groups: (N,) the patient of each training pair (folds never split a patient).

    Returns:
        ``(k, C, score)``: the best inner-fold mean balanced accuracy; ties go to the smaller
        k, then the smaller C (the lower capacity).

    Raises:
        DataError: training pairs from fewer than 2 patients (no folds to choose in).
    """
    folds = patient_folds(groups, "eval.pca: auto", "k and C; give eval.pca a number")
    best: tuple[float, int, float] | None = None
    for k in sorted(candidates):
        search = GridSearchCV(
            build_classifier("logreg"),
            {"clf__C": list(CV_CS)},
            cv=folds,
            scoring="balanced_accuracy",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a fold's convergence or a class absent from it
            search.fit(candidates[k], y)
        score = float(search.best_score_)
        c = float(search.best_params_["clf__C"])
        if best is None or score > best[0] + 1e-12:
            best = (score, k, c)
    assert best is not None, "no candidate"
    return best[1], best[2], best[0]


def expected_change(model: Pipeline, features: np.ndarray) -> np.ndarray:
    """(P,) the probe's expected signed change, p_improve - p_worsen (a class the probe
    never saw in training has probability 0)."""
    probabilities = np.asarray(model.predict_proba(features), dtype=np.float64)
    classes = [str(c) for c in model.classes_]

    def column(label: str) -> np.ndarray:
        if label not in classes:
            return np.zeros(len(probabilities))
        return probabilities[:, classes.index(label)]

    return column("improve") - column("worsen")
