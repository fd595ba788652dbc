"""Model files (samlearn.embedding.model_file): a safetensors file with no pickle, a mandatory
checksum, legacy (format 1, torch.save) files still loaded safely with a re-save warning, and files
created with the permissions of the umask."""
import json
import os
import pickle
import stat
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import samlearn
from samlearn.embedding import model_file as persistence
from samlearn.embedding.cache import EmbeddingCache
from samlearn.embedding.model_file import (FORMAT_VERSION, load_payload, payload_digest, read_checkpoint,
                                           save_payload)
from samlearn.exceptions import ModelFileError, ModelFormatWarning
from helpers import smooth_images, tiny_embedder


@pytest.fixture(scope="module")
def images():
    return smooth_images(2, ndim=2, seed=0)


@pytest.fixture(scope="module")
def fitted(images):
    return tiny_embedder(random_state=0).fit(images)


@pytest.fixture(scope="module")
def model_path(fitted, tmp_path_factory):
    return fitted.save(tmp_path_factory.mktemp("model") / "model.samlearn")


def _same_output(a, b, image):
    ea, eb = a.embed(image), b.embed(image)
    return (torch.equal(ea.global_map.data, eb.global_map.data)
            and torch.equal(ea.local_map.data, eb.local_map.data))


def _metadata(path):
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def _write_legacy(path, kind, meta, tensors, checksum=True):
    """A format-1 file exactly as samlearn wrote it before format 2 (``torch.save`` of a dict)."""
    meta_json = json.dumps(meta, allow_nan=True)
    payload = {"magic": "samlearn-model", "kind": kind, "format_version": 1,
               "samlearn_version": samlearn.__version__, "torch_version": str(torch.__version__),
               "meta_json": meta_json, "tensors": tensors, "sha256": payload_digest(meta_json, tensors)}
    if not checksum:
        del payload["sha256"]
    torch.save(payload, path)
    return path


def _legacy_copy(model_path, dest, checksum=True):
    kind, meta, tensors, _ = load_payload(model_path)
    return _write_legacy(dest, kind, meta, tensors, checksum=checksum)


class _Evil:
    """Unpickled, runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


# ------------------------------------------------------------------------------- the format


def test_round_trip_gives_identical_output(fitted, model_path, images):
    back = samlearn.load(model_path)
    assert back.get_params() == fitted.get_params()
    assert back.n_iter_ == fitted.n_iter_ and back.history_ == fitted.history_
    a, b = fitted.network_.state_dict(), back.network_.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert _same_output(fitted, back, images[1])


def test_file_is_safetensors_without_pickle(model_path, fitted):
    data = Path(model_path).read_bytes()
    assert not zipfile.is_zipfile(model_path) and data[:1] != b"\x80"  # not a torch archive, not a pickle
    meta = _metadata(model_path)
    assert meta["magic"] == "samlearn-model" and meta["kind"] == "SAMEmbedder"
    assert int(meta["format_version"]) == FORMAT_VERSION == 2
    assert len(meta["sha256"]) == 64 and int(meta["sha256"], 16) >= 0
    assert json.loads(meta["meta_json"])["n_iter"] == fitted.n_iter_
    # the file is the safetensors header followed by the raw tensor bytes and nothing else
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    spans = sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == len(data) - 8 - n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    with safe_open(str(model_path), framework="pt") as f:
        names = set(f.keys())
    assert names == {f"network/{k}" for k in fitted.network_.state_dict()}


def test_nested_tensors_and_plain_values_round_trip(tmp_path):
    base = torch.arange(12.0)
    tensors = {
        "network": {"a.weight": torch.randn(3, 4), "empty": torch.zeros(0, 2), "scalar": torch.tensor(3),
                    "flags": torch.tensor([True, False]), "half": torch.ones(2, dtype=torch.bfloat16)},
        "optimizer": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.ones(2)}, 1: {}},
                      "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False,
                                        "foreach": None, "params": [0, 1], "name": "main", "nan": float("nan")}]},
        "views": [base[:6], base[6:], base.view(3, 4).t()],  # shared storage, non-contiguous
        "same": (base, base),
        "grad_scaler": {"scale": 65536.0, "_growth_tracker": 3},
    }
    save_payload(tmp_path / "m.samlearn", "Thing", {"x": [1, 2]}, tensors)
    kind, meta, back, header = load_payload(tmp_path / "m.samlearn")
    assert kind == "Thing" and meta == {"x": [1, 2]} and header["format_version"] == 2
    assert set(back["optimizer"]["state"]) == {0, 1}  # int keys stay ints
    group = back["optimizer"]["param_groups"][0]
    assert group["betas"] == (0.9, 0.999) and isinstance(group["betas"], tuple)
    assert group["foreach"] is None and group["amsgrad"] is False and group["params"] == [0, 1]
    assert group["lr"] == 1e-3 and group["name"] == "main" and group["nan"] != group["nan"]
    assert torch.equal(back["optimizer"]["state"][0]["step"], torch.tensor(5.0))
    for key, value in tensors["network"].items():
        assert back["network"][key].dtype == value.dtype and torch.equal(back["network"][key], value)
    assert all(torch.equal(x, y) for x, y in zip(back["views"], tensors["views"]))
    assert back["grad_scaler"] == {"scale": 65536.0, "_growth_tracker": 3}
    assert type(back["grad_scaler"]["_growth_tracker"]) is int
    assert isinstance(back["same"], tuple) and all(torch.equal(x, base) for x in back["same"])
    assert payload_digest(json.dumps(meta), back) == header["sha256"]


def test_values_that_cannot_be_stored_are_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot store a value of type object"):
        save_payload(tmp_path / "m.samlearn", "Thing", {}, {"x": object()})
    with pytest.raises(TypeError, match="cannot store a key of type tuple"):
        save_payload(tmp_path / "m.samlearn", "Thing", {}, {(1, 2): torch.ones(1)})
    assert not list(tmp_path.iterdir())


def test_checkpoint_with_optimizer_state_resumes(tmp_path, images):
    ckpt = tmp_path / "ckpt.samlearn"
    tiny_embedder(random_state=0, max_iter=2, checkpoint_path=str(ckpt)).fit(images)
    meta, tensors = read_checkpoint(ckpt)
    assert meta["n_iter"] == 2 and set(tensors) == {"network", "optimizer"}
    assert all(isinstance(k, int) for k in tensors["optimizer"]["state"])
    resumed = tiny_embedder(random_state=0, max_iter=4, checkpoint_path=str(ckpt), resume=True).fit(images)
    assert resumed.n_iter_ == 4 and [h["iteration"] for h in resumed.history_] == [1, 2, 3, 4]
    # the optimiser state was restored (its int keys kept): Adam counts all 4 steps, not 2
    steps = {float(s["step"]) for s in resumed._optimizer_state["state"].values()}
    assert steps == {4.0}


# ------------------------------------------------------------------------------- integrity


def test_file_without_checksum_is_refused(model_path, tmp_path):
    meta = _metadata(model_path)
    del meta["sha256"]
    p = tmp_path / "no_checksum.samlearn"
    save_file(load_file(str(model_path)), str(p), metadata=meta)
    with pytest.raises(ModelFileError, match="checksum is missing"):
        samlearn.load(p)


def test_scaled_weight_is_refused(model_path, tmp_path):
    meta = _metadata(model_path)
    flat = load_file(str(model_path))
    name = next(k for k, v in flat.items() if v.is_floating_point() and v.dim() == 4)
    flat[name] = flat[name] * 1.5
    p = tmp_path / "scaled.samlearn"
    save_file(flat, str(p), metadata=meta)
    with pytest.raises(ModelFileError, match="checksum does not match"):
        samlearn.load(p)


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.3, 0.5, 0.999])
def test_truncated_file_is_refused(model_path, tmp_path, fraction):
    data = Path(model_path).read_bytes()
    p = tmp_path / "truncated.samlearn"
    p.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFileError, match="corrupt, truncated"):
        samlearn.load(p)


def test_header_edits_are_refused(model_path, tmp_path):
    def rewrite(**changes):
        meta = dict(_metadata(model_path), **changes)
        meta = {k: v for k, v in meta.items() if v is not None}
        p = tmp_path / "edited.samlearn"
        save_file(load_file(str(model_path)), str(p), metadata=meta)
        return p

    with pytest.raises(ModelFileError, match="not a samlearn model file"):
        samlearn.load(rewrite(magic="other"))
    with pytest.raises(ModelFileError, match="format version 3.*Upgrade samlearn"):
        samlearn.load(rewrite(format_version="3"))
    with pytest.raises(ModelFileError, match="damaged"):
        samlearn.load(rewrite(format_version="1"))  # format 1 is a torch archive, not safetensors
    with pytest.raises(ModelFileError, match="damaged"):
        samlearn.load(rewrite(layout_json='{"dict": [["network", {"tensor": "nope"}]]}'))
    with pytest.raises(ModelFileError, match="holds a Other, expected a SAMEmbedder"):
        read_checkpoint(rewrite(kind="Other"))
    plain = tmp_path / "plain.safetensors"  # a safetensors file that is not a samlearn model
    save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(ModelFileError, match="not a samlearn model file"):
        samlearn.load(plain)


# ------------------------------------------------------------------------------- legacy files


def test_legacy_file_loads_with_a_resave_warning(model_path, fitted, images, tmp_path):
    legacy = _legacy_copy(model_path, tmp_path / "old.samlearn")
    assert zipfile.is_zipfile(legacy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = samlearn.load(legacy)
    assert [w.category for w in caught] == [ModelFormatWarning]
    assert issubclass(ModelFormatWarning, UserWarning) and not issubclass(ModelFormatWarning, FutureWarning)
    assert "re-save" in str(caught[0].message) and "call .save() again" in str(caught[0].message)
    assert _same_output(fitted, back, images[0])
    # saving again gives the current format, which loads without a warning
    back.save(legacy)
    assert not zipfile.is_zipfile(legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _same_output(fitted, samlearn.load(legacy), images[0])


def test_legacy_checkpoint_resumes(tmp_path, images):
    ckpt = tmp_path / "ckpt.samlearn"
    tiny_embedder(random_state=0, max_iter=2, checkpoint_path=str(ckpt)).fit(images)
    _, meta, tensors, _ = load_payload(ckpt)
    _write_legacy(ckpt, "SAMEmbedder", meta, tensors)
    with pytest.warns(ModelFormatWarning, match="old format"):
        est = tiny_embedder(random_state=0, max_iter=3, checkpoint_path=str(ckpt), resume=True).fit(images)
    assert est.n_iter_ == 3
    assert not zipfile.is_zipfile(ckpt) and load_payload(ckpt)[1]["n_iter"] == 3  # rewritten as format 2


def test_legacy_file_without_checksum_is_refused(model_path, tmp_path):
    legacy = _legacy_copy(model_path, tmp_path / "old.samlearn", checksum=False)
    with pytest.raises(ModelFileError, match="checksum is missing"):
        samlearn.load(legacy)


def test_legacy_file_with_edited_weight_is_refused(model_path, tmp_path):
    kind, meta, tensors, _ = load_payload(model_path)
    legacy = _write_legacy(tmp_path / "old.samlearn", kind, meta, tensors)
    payload = torch.load(legacy, weights_only=True)
    name = next(k for k, v in payload["tensors"]["network"].items() if v.dim() == 4)
    payload["tensors"]["network"][name] = payload["tensors"]["network"][name] * 1.5
    torch.save(payload, legacy)
    with pytest.raises(ModelFileError, match="checksum does not match"):
        samlearn.load(legacy)


@pytest.mark.parametrize("where", ["tensors", "top"])
def test_legacy_file_with_code_is_refused_and_never_runs(model_path, tmp_path, monkeypatch, where):
    marker, probe = tmp_path / "PWNED", tmp_path / "probe"
    pickle.loads(pickle.dumps(_Evil(probe)))  # under plain pickle the payload does run
    assert probe.exists()
    kind, meta, tensors, _ = load_payload(model_path)
    if where == "tensors":
        tensors["network"]["evil"] = _Evil(marker)
        evil = _write_legacy(tmp_path / "evil.samlearn", kind, meta, {"network": tensors["network"]})
    else:
        evil = tmp_path / "evil.samlearn"
        torch.save({"magic": "samlearn-model", "x": _Evil(marker)}, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # even when the environment asks for it
    for load in (samlearn.load, read_checkpoint):
        with pytest.raises(ModelFileError) as info:
            load(evil)
        message = str(info.value)
        assert "not plain data" in message and "refused" in message
        assert "weights_only=False" not in message and "weights_only" not in message
        assert "corrupt" not in message
    assert not marker.exists(), "loading the model file ran its code"


def test_damaged_legacy_file_is_reported_as_corrupt(model_path, tmp_path):
    legacy = _legacy_copy(model_path, tmp_path / "old.samlearn")
    data = legacy.read_bytes()
    legacy.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt, truncated") as info:
        samlearn.load(legacy)
    assert "not plain data" not in str(info.value)


# ------------------------------------------------------------------------------- permissions


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_files_follow_the_umask(fitted, images, tmp_path):
    embedding = fitted.embed(images[0])
    old = os.umask(0o022)
    try:
        model = fitted.save(tmp_path / "shared.samlearn")
        cache = EmbeddingCache(tmp_path / "cache", "f" * 40).save("key", embedding)
        assert stat.S_IMODE(os.stat(model).st_mode) == 0o644
        assert stat.S_IMODE(os.stat(cache).st_mode) == 0o644
        os.umask(0o077)
        private = fitted.save(tmp_path / "private.samlearn")
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    finally:
        os.umask(old)
    assert sorted(p.name for p in (tmp_path / "cache" / ("f" * 32)).iterdir()) == ["key.pt"]  # no temporary left
    assert EmbeddingCache(tmp_path / "cache", "f" * 40).load("key", "cpu") is not None


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(persistence.os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_payload(tmp_path / "m.samlearn", "Thing", {}, {"w": torch.ones(3)})
    assert not list(tmp_path.iterdir())
