"""The error types samlearn raises beyond Python's own, one per kind of mistake.

* :class:`InvalidParameterError` -- an estimator or function parameter outside its declared
  constraints (a ``ValueError`` and a ``TypeError``, so either ``except`` catches it).
* :class:`ModelFileError` -- a model, checkpoint or embedding file that is not an intact samlearn
  file (a ``ValueError``: the input is bad).
* :class:`RegistrationError` -- a registration that could not produce a transform from the
  images it was given (too few confident matches, degenerate point layouts).
* :class:`ModelFormatWarning` -- a model file in an old format, loaded, that should be saved again
  (a ``UserWarning``).
* :class:`RegistrationQualityWarning` -- a registration that produced a transform its own evidence
  does not support (a ``UserWarning``; the result's ``quality_`` says why).

Unfitted estimators raise scikit-learn's ``sklearn.exceptions.NotFittedError``; bad images and
points raise ``ValueError`` / ``TypeError`` naming the argument.
"""

__all__ = ["InvalidParameterError", "ModelFileError", "ModelFormatWarning", "RegistrationError",
           "RegistrationQualityWarning"]


class InvalidParameterError(ValueError, TypeError):
    """A parameter value outside its declared constraints.

    The message names the parameter, what it must be and what was given, e.g.
    ``"mode must be one of ('sum', 'global', 'local'), got 'max'"``. It derives from both
    ``ValueError`` and ``TypeError`` (as scikit-learn's error of the same name does), so code
    written for either keeps working.
    """


class ModelFileError(ValueError):
    """A model file that is missing its samlearn header, corrupt, truncated or unsafe."""


class ModelFormatWarning(UserWarning):
    """A model file in an old samlearn format: it loaded, but should be saved again.

    ``samlearn.load(path).save(path)`` rewrites it in the current format (see
    :mod:`samlearn.embedding.model_file`).
    """


class RegistrationError(RuntimeError):
    """Registration could not produce a transform (e.g. too few confident matches)."""


class RegistrationQualityWarning(UserWarning):
    """A registration whose transform its own matches do not support (too few of them agree, or
    they leave it uncertain): likely wrong. The registrar's ``quality_`` gives the measures."""
