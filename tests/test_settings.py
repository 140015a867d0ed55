"""params.yaml is read as YAML 1.2 (DVC's semantics) and validated into typed settings."""
from __future__ import annotations

import pytest

from pipeline.errors import InputError
from stages.settings import load_params
from tests.helpers import REPO, write_params


def test_repo_params_are_valid():
    p = load_params(REPO / "params.yaml")
    assert p.data.crop == 128 and p.mask.type == "random"


def test_yaml_12_floats(tmp_path):
    f = tmp_path / "p.yaml"
    text = (REPO / "params.yaml").read_text()
    assert "  lr: 5.0e-5 " in text and "  acceleration: 4\n" in text
    f.write_text(text.replace("  lr: 5.0e-5 ", "  lr: 1e-4 ").replace("  acceleration: 4\n", "  acceleration: 8\n"))
    p = load_params(f)
    assert p.mrnet.lr == pytest.approx(1e-4) and isinstance(p.mrnet.lr, float)
    assert p.mask.acceleration == 8.0


@pytest.mark.parametrize("sections,key", [
    ({"data": {"crop": "128"}}, "data.crop"),
    ({"data": {"crop": 2}}, "data.crop"),
    ({"mask": {"acceleration": "fast"}}, "mask.acceleration"),
    ({"mask": {"typo": 1}}, "mask.typo: unknown key"),
    ({"synthetic": {"volumes": {"train": 0, "val": 1, "test": 1}}}, "synthetic.volumes"),
    ({"seed": 1.5}, "seed"),
])
def test_bad_values_name_the_key(tmp_path, sections, key):
    f = write_params(tmp_path / "p.yaml", **sections)
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        load_params(f)


def test_unparseable(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("data: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_params(f)
