"""Reusable conformance checks for samlearn's image estimators (after nilearn's
``nilearn/_utils/estimator_checks.py``).

scikit-learn's ``check_estimator`` feeds numpy arrays; samlearn estimators take images (with world
geometry) and world-mm points, so most of sklearn's checks cannot run on them as they are. This
module runs the checks that need no data (:data:`SKLEARN_DATA_FREE_CHECKS`, called directly) and
image-based equivalents of the others (:data:`IMAGE_CHECKS`; :data:`REPLACED_SKLEARN_CHECKS` says
which sklearn check each one replaces).

Each estimator is described by an :class:`EstimatorCase`: how to build it, the arguments of ``fit``,
one deterministic numeric output of the fitted estimator, the methods that need fitting, and
optionally a parameter grid for ``GridSearchCV``. To check a new estimator, add its case to the
parametrised list of ``tests/test_estimator_conformance.py``::

    CASES = [embedder_case(), detector_case(), ..., EstimatorCase(name="LesionMatcher", ...)]

    @pytest.mark.parametrize("case, check", samlearn_checks(CASES))
    def test_conformance(case, check):
        check(case)

A check fails with an ``AssertionError`` saying what broke; ``case.skip`` maps a check name to the
reason it does not apply (reported as a skipped test, never silently dropped).
"""
from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import estimator_checks as sk
from sklearn.utils.validation import check_is_fitted

__all__ = [
    "EstimatorCase",
    "SKLEARN_DATA_FREE_CHECKS",
    "IMAGE_CHECKS",
    "REPLACED_SKLEARN_CHECKS",
    "samlearn_checks",
]

#: scikit-learn checks that never call ``fit`` on arrays: called directly, as sklearn defines them.
SKLEARN_DATA_FREE_CHECKS = (
    sk.check_no_attributes_set_in_init,
    sk.check_parameters_default_constructible,
    sk.check_get_params_invariance,
    sk.check_set_params,
    sk.check_estimator_repr,
    sk.check_estimator_cloneable,
    sk.check_estimator_tags_renamed,
    sk.check_valid_tag_types,
    sk.check_mixin_order,
    sk.check_do_not_raise_errors_in_init_or_set_params,
)


@dataclass
class EstimatorCase:
    """How to exercise one estimator in the conformance checks.

    name : id of the case in test names.
    make : returns a fresh, unfitted estimator (with a fixed ``random_state`` where it has one).
    fit_args : returns the positional arguments of ``fit`` (images, then points / y if any).
    output : maps a fitted estimator (or a Pipeline ending in it) to a numeric array that must be
        reproducible: fit twice, pickle, pipeline and clone-refit must give it exactly.
    methods : name -> function returning the positional arguments; each must raise
        ``NotFittedError`` before ``fit``.
    shared_params : parameters that ``clone`` deliberately passes through by identity (frozen,
        pre-trained components such as the detector's embedder).
    grid, cv_data : a ``GridSearchCV`` param grid and the (X, y) it is run on (needs ``score``).
    skip : check name -> reason it does not apply to this estimator.
    """

    name: str
    make: Callable[[], BaseEstimator]
    fit_args: Callable[[], tuple]
    output: Callable[[object], np.ndarray]
    methods: dict = field(default_factory=dict)
    shared_params: tuple = ()
    grid: Optional[dict] = None
    cv_data: Optional[Callable[[], tuple]] = None
    skip: dict = field(default_factory=dict)

    def __repr__(self):
        return self.name


# ------------------------------------------------------------------------------------ helpers


def _fitted_attributes(est) -> list:
    return sorted(k for k in vars(est) if k.endswith("_") and not k.startswith("__"))


def _as_array(out) -> np.ndarray:
    if torch.is_tensor(out):
        return out.detach().cpu().numpy()
    return np.asarray(out)


def _assert_same_output(a, b, what):
    a, b = _as_array(a), _as_array(b)
    assert a.shape == b.shape, f"{what}: output shapes differ {a.shape} vs {b.shape}"
    assert np.array_equal(a, b, equal_nan=True), \
        f"{what}: outputs differ (max |diff| {np.nanmax(np.abs(a.astype(float) - b.astype(float))):.3g})"


def _snapshot_args(args):
    """Deep copies of every numpy array reachable from the fit arguments (images' pixels too)."""
    out = []
    for a in args:
        items = a if isinstance(a, (list, tuple)) else [a]
        for item in items:
            arr = getattr(item, "array", item)
            if isinstance(arr, np.ndarray):
                out.append(arr.copy())
    return out


def _params_fingerprint(est, shared):
    params = est.get_params(deep=False)
    plain = {k: v for k, v in params.items() if not isinstance(v, BaseEstimator)}
    objs = {k: id(v) for k, v in params.items() if isinstance(v, BaseEstimator)}
    return joblib.hash(plain), objs


# ------------------------------------------------------------------------------------ image checks


def check_fit_returns_self(case):
    """Replaces sklearn's check_estimators_fit_returns_self."""
    est = case.make()
    assert est.fit(*case.fit_args()) is est, "fit must return self"


def check_unfitted_raises_not_fitted(case):
    """Replaces check_estimators_unfitted / check_fit_check_is_fitted: every method that needs a
    fitted estimator raises NotFittedError before fit; check_is_fitted agrees before and after."""
    est = case.make()
    with pytest.raises(NotFittedError):
        check_is_fitted(est)
    for method, args in case.methods.items():
        with pytest.raises(NotFittedError):
            getattr(est, method)(*args())
    est.fit(*case.fit_args())
    check_is_fitted(est)


def check_fit_idempotent(case):
    """Replaces check_fit_idempotent: with a fixed seed, fitting twice (the same object, and a
    fresh one) gives exactly the same output."""
    args = case.fit_args()
    est = case.make().fit(*args)
    first = case.output(est)
    _assert_same_output(first, case.output(est.fit(*args)), "refit of the same estimator")
    _assert_same_output(first, case.output(case.make().fit(*args)), "fit of a fresh estimator")


def check_clone_of_fitted_is_unfitted(case):
    """A clone of a fitted estimator has its parameters and nothing it learned; parameters listed
    in ``shared_params`` (frozen components) are passed through by identity. Refitting the clone
    gives the original's output."""
    args = case.fit_args()
    est = case.make().fit(*args)
    c = clone(est)
    assert _fitted_attributes(c) == [], f"clone kept fitted attributes {_fitted_attributes(c)}"
    with pytest.raises(NotFittedError):
        check_is_fitted(c)
    p_est, p_c = est.get_params(deep=False), c.get_params(deep=False)
    assert set(p_est) == set(p_c)
    for k, v in p_est.items():
        if k in case.shared_params:
            assert p_c[k] is v, f"clone must share the frozen parameter {k!r}, not copy it"
        elif isinstance(v, BaseEstimator):
            assert p_c[k] is not v and not _fitted_attributes(p_c[k]), f"nested estimator {k!r} must be an unfitted clone"
        else:
            assert joblib.hash(p_c[k]) == joblib.hash(v), f"clone changed parameter {k!r}"
    _assert_same_output(case.output(est), case.output(c.fit(*args)), "clone refit")


def check_pickle_round_trip(case):
    """Replaces check_estimators_pickle: a pickled and unpickled fitted estimator gives exactly
    the same output (also via joblib, the format sklearn users save models with)."""
    est = case.make().fit(*case.fit_args())
    expected = case.output(est)
    _assert_same_output(expected, case.output(pickle.loads(pickle.dumps(est))), "pickle round trip")
    unfitted = pickle.loads(pickle.dumps(case.make()))
    assert _fitted_attributes(unfitted) == []


def check_params_not_mutated_by_fit(case):
    """Replaces check_dont_overwrite_parameters / check_estimators_overwrite_params: fit leaves
    every parameter unchanged (values, and identity of estimator-valued parameters)."""
    est = case.make()
    before = _params_fingerprint(est, case.shared_params)
    est.fit(*case.fit_args())
    assert _params_fingerprint(est, case.shared_params) == before, "fit changed a parameter"


def check_inputs_not_mutated(case):
    """Replaces check_dict_unchanged / check_inplace_ensure_writeable: fit and the fitted methods
    never write into the caller's images or point arrays."""
    args = case.fit_args()
    before = _snapshot_args(args)
    est = case.make().fit(*args)
    for method, margs in case.methods.items():
        a = margs()
        snap = _snapshot_args(a)
        getattr(est, method)(*a)
        for x, y in zip(_snapshot_args(a), snap):
            assert np.array_equal(x, y, equal_nan=True), f"{method} modified its input arrays"
    for x, y in zip(_snapshot_args(args), before):
        assert np.array_equal(x, y, equal_nan=True), "fit modified its input arrays"


def check_global_rng_untouched(case):
    """Randomness comes from ``random_state`` only: fit and the methods leave numpy's and torch's
    global generators where they were (so other code seeded by the user is not disturbed)."""
    np.random.seed(1234)
    torch.manual_seed(1234)
    expected = (np.random.random_sample(3), torch.rand(3))
    np.random.seed(1234)
    torch.manual_seed(1234)
    est = case.make().fit(*case.fit_args())
    for method, margs in case.methods.items():
        getattr(est, method)(*margs())
    np.testing.assert_array_equal(np.random.random_sample(3), expected[0])
    assert torch.equal(torch.rand(3), expected[1]), "torch's global RNG was used"


def _identity_step():
    # a stateless first step: Pipeline must pass images through unchanged (lists of Images)
    return FunctionTransformer(lambda x: x, validate=False)


def check_in_pipeline(case):
    """Replaces check_pipeline_consistency: the estimator works as the last step of a Pipeline,
    which gives the same output as the bare estimator, also after cloning the pipeline."""
    args = case.fit_args()
    bare = case.make().fit(*args)
    pipe = Pipeline([("identity", _identity_step()), ("est", case.make())]).fit(*args)
    _assert_same_output(case.output(bare), case.output(pipe), "Pipeline")
    again = clone(pipe).fit(*args)
    _assert_same_output(case.output(bare), case.output(again), "cloned Pipeline")


def check_grid_search(case):
    """Model selection: GridSearchCV over ``case.grid`` (cloning, fitting and scoring the
    estimator per fold) runs, scores every candidate with a finite score and refits the best."""
    X, y = case.cv_data()
    search = GridSearchCV(case.make(), case.grid, cv=KFold(2), error_score="raise", n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=UserWarning)  # e.g. failed fits reported as warnings
        search.fit(X, y)
    n_candidates = int(np.prod([len(v) for v in case.grid.values()]))
    scores = np.asarray(search.cv_results_["mean_test_score"], dtype=float)
    assert scores.shape == (n_candidates,) and np.all(np.isfinite(scores)), scores
    check_is_fitted(search.best_estimator_)
    assert search.best_params_ in search.cv_results_["params"]
    for k in case.shared_params:
        assert search.best_estimator_.get_params()[k] is search.estimator.get_params()[k], \
            f"GridSearchCV's clones must share the frozen parameter {k!r}"
    assert np.isfinite(search.score(X, y))


def _sklearn_check(check):
    def run(case):
        check(case.name, case.make())
    run.__name__ = check.__name__
    run.__doc__ = f"scikit-learn's {check.__name__}, called directly (needs no data)."
    return run


#: the image-based checks, in the order they run
IMAGE_CHECKS = (
    check_fit_returns_self,
    check_unfitted_raises_not_fitted,
    check_fit_idempotent,
    check_clone_of_fitted_is_unfitted,
    check_pickle_round_trip,
    check_params_not_mutated_by_fit,
    check_inputs_not_mutated,
    check_global_rng_untouched,
    check_in_pipeline,
    check_grid_search,
)

#: sklearn checks that need array input, and the image check above that replaces each
REPLACED_SKLEARN_CHECKS = {
    "check_estimators_fit_returns_self": "check_fit_returns_self",
    "check_estimators_unfitted": "check_unfitted_raises_not_fitted",
    "check_fit_check_is_fitted": "check_unfitted_raises_not_fitted",
    "check_fit_idempotent": "check_fit_idempotent",
    "check_estimators_pickle": "check_pickle_round_trip",
    "check_dont_overwrite_parameters": "check_params_not_mutated_by_fit",
    "check_estimators_overwrite_params": "check_params_not_mutated_by_fit",
    "check_dict_unchanged": "check_inputs_not_mutated",
    "check_inplace_ensure_writeable": "check_inputs_not_mutated",
    "check_pipeline_consistency": "check_in_pipeline",
    "check_estimators_nan_inf": "tests/test_reliability.py bad-input matrix",
    "check_estimators_empty_data_messages": "tests/test_reliability.py bad-input matrix",
    "check_estimators_dtypes": "not applicable: images are float32 by construction",
    "check_n_features_in": "not applicable: images, not feature arrays",
}


def samlearn_checks(cases):
    """``pytest.param(case, check)`` for every case and every check (sklearn's data-free checks,
    then the image checks), with ids ``"<case>-<check>"``; checks in ``case.skip`` are marked as
    skipped with their reason. Checks needing a grid are skipped for cases without one."""
    checks = [_sklearn_check(c) for c in SKLEARN_DATA_FREE_CHECKS] + list(IMAGE_CHECKS)
    for case in cases:
        for check in checks:
            reason = case.skip.get(check.__name__)
            if reason is None and check is check_grid_search and case.grid is None:
                reason = "no parameter grid / score for this estimator"
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            yield pytest.param(case, check, id=f"{case.name}-{check.__name__}", marks=marks)

