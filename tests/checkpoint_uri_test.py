"""Teacher artifacts at URIs: ``gs://`` paths reach the storage layer unmangled, and a
scheme without a backend (or an unknown one) is one clear line."""

import os

import pytest
from data_tfds_test import _gs_as_local
from train_fixtures import one_line, random_variables

from jkt import checkpoint, models


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("bucket")
    model = models.create("vgg4", 3, width_multiplier=0.0625)
    meta = checkpoint.TeacherMeta(arch="vgg4", num_classes=3, input_size=(32, 32, 3),
                                  mean=(0.5,) * 3, std=(0.25,) * 3, dataset="toy",
                                  model_options={"width_multiplier": 0.0625})
    checkpoint.save_teacher(root / "teacher", random_variables(model), meta)
    return root, meta


def test_gs_teacher_meta_is_read_through_epath(artifact):
    """The meta JSON (read before any weights, to check architecture and classes) comes
    through :mod:`etils.epath`, which serves ``gs://`` with its backend; the URI arrives
    unmangled (``_gs_as_local`` asserts it)."""
    from etils.epath import testing as epath_testing

    root, meta = artifact
    with epath_testing.mock_epath(**_gs_as_local(root)):
        assert checkpoint.read_teacher_meta("gs://bucket/teacher") == meta
        with pytest.raises(FileNotFoundError, match="No teacher artifact at gs://bucket/nope"):
            checkpoint.read_teacher_meta("gs://bucket/nope")


@pytest.mark.parametrize("uri, message", [
    ("file:///tmp/teacher", "unsupported storage scheme file://"),
    ("ftp://host/teacher", "unsupported storage scheme ftp://"),
])
def test_unsupported_scheme_is_one_line(uri, message):
    with pytest.raises(ValueError) as e:
        checkpoint.read_teacher_meta(uri)
    assert message in one_line(e) and "gs://" in one_line(e)


def test_missing_backend_is_one_line(monkeypatch):
    """Without ``gcsfs`` (or TensorFlow) epath cannot open ``gs://``: one line saying what
    to install, not an ImportError traceback."""
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    monkeypatch.setitem(os.environ, "NO_GCE_CHECK", "true")
    with pytest.raises(ValueError) as e:
        checkpoint.restore_teacher("gs://bucket/teacher")
    assert "cannot read gs://bucket/teacher" in one_line(e) and "pip install gcsfs" in one_line(e)
