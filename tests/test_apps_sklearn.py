"""The data-free scikit-learn estimator checks for the application estimators (image inputs switch
off most of check_estimator; DESIGN.md), and parameters left untouched by fit."""
import pytest
from sklearn.base import clone
from sklearn.utils import estimator_checks as checks

from samlearn import LandmarkIntensityFeatures, LesionMatcher, SAMAffineRegistrar, SAMDeformableRegistrar


@pytest.mark.parametrize("cls", [LesionMatcher, SAMAffineRegistrar, SAMDeformableRegistrar,
                                 LandmarkIntensityFeatures])
def test_data_free_estimator_checks(cls):
    est = cls()
    name = cls.__name__
    checks.check_no_attributes_set_in_init(name, est)
    checks.check_parameters_default_constructible(name, est)
    checks.check_get_params_invariance(name, est)
    checks.check_set_params(name, est)
    checks.check_estimator_repr(name, est)
    checks.check_estimator_cloneable(name, est)
    assert clone(est).get_params() == est.get_params()
