"""Every public class, function and method has a numpydoc docstring whose Parameters match the
signature (numpydoc's own validation, a chosen set of its checks)."""
import importlib
import inspect
import pkgutil

import pytest

numpydoc_validate = pytest.importorskip("numpydoc.validate")

import samlearn  # noqa: E402

#: the numpydoc checks enforced: a docstring with a summary, known sections in order, every
#: parameter documented and none that does not exist, a Returns / Yields section for what
#: returns / yields something
CHECKS = {"GL06", "GL07", "GL08", "SS01", "PR01", "PR02", "PR10", "RT01", "YD01"}


def _public_modules():
    for info in pkgutil.walk_packages(samlearn.__path__, "samlearn."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        yield importlib.import_module(info.name)


def _public_objects():
    seen = set()
    for module in [samlearn, *_public_modules()]:
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or obj.__module__ != module.__name__:
                continue
            qual = f"{module.__name__}.{name}"
            if qual in seen:
                continue
            seen.add(qual)
            yield qual, obj
            if inspect.isclass(obj):
                for attr, value in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    if inspect.isfunction(value) or isinstance(value, (property, classmethod, staticmethod)):
                        yield f"{qual}.{attr}", value


OBJECTS = sorted(dict(_public_objects()))


def test_the_public_api_is_found():
    assert "samlearn.embedding.estimator.SAMEmbedder.fit" in OBJECTS
    assert "samlearn.matching.search.match_points" in OBJECTS and len(OBJECTS) > 150


@pytest.mark.parametrize("name", OBJECTS)
def test_numpydoc(name):
    result = numpydoc_validate.validate(name)
    errors = [f"{code}: {msg}" for code, msg in result["errors"] if code in CHECKS]
    if result.get("type") == "property":
        errors = [e for e in errors if e.startswith(("GL08", "SS01"))]
    assert not errors, f"{name}:\n" + "\n".join(errors)
