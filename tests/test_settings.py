"""params.yaml is read as YAML 1.2 (DVC's semantics) and validated into typed settings."""
from __future__ import annotations

import pytest

from pipeline.errors import InputError
from stages.settings import load_params
from tests.helpers import REPO


def test_repo_params_are_valid():
    p = load_params(REPO / "params.yaml")
    assert p.data.crop == 128 and p.mask.type == "random"


def test_yaml_12_floats(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("mrnet:\n  lr: 1e-4\nmask:\n  acceleration: 8\n")
    p = load_params(f)
    assert p.mrnet.lr == pytest.approx(1e-4) and isinstance(p.mrnet.lr, float)
    assert p.mask.acceleration == 8.0


@pytest.mark.parametrize("text,key", [
    ("data:\n  crop: '128'\n", "data.crop"),
    ("data:\n  crop: 2\n", "data.crop"),
    ("mask:\n  acceleration: fast\n", "mask.acceleration"),
    ("mask:\n  typo: 1\n", "mask.typo: unknown key"),
    ("synthetic:\n  volumes: {train: 0, val: 1, test: 1}\n", "synthetic.volumes"),
    ("seed: 1.5\n", "seed"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        load_params(f)


def test_unparseable(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("data: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_params(f)
