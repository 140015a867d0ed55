"""params.yaml is read as YAML 1.2 (DVC's semantics) and validated into typed settings."""
from __future__ import annotations

import re

import pytest
from ruamel.yaml import YAML

from pipeline.errors import InputError
from stages.settings import load_params
from tests.helpers import REPO, write_params


def test_repo_params_arrive_as_written():
    """Every value of the repo's params.yaml reaches the settings unchanged: none dropped, defaulted,
    renamed or coerced to another value (YAML 1.2, as DVC reads the file)."""
    raw = YAML(typ="safe", pure=True).load((REPO / "params.yaml").read_text())
    settings = load_params(REPO / "params.yaml").model_dump()
    assert settings == raw
    lr = re.search(r"\nmrnet:\n(?:  .*\n)*?  lr: (\S+)", (REPO / "params.yaml").read_text()).group(1)
    assert settings["mrnet"]["lr"] == float(lr) and settings["data"]["annotation_frame"] is None   # spot checks


def test_yaml_12_floats(tmp_path):
    f = tmp_path / "p.yaml"
    text = (REPO / "params.yaml").read_text()
    lr = re.search(r"\nmrnet:\n(?:  .*\n)*?(  lr: \S+ )", text).group(1)
    assert "e-" in lr and "  acceleration: 4\n" in text        # YAML 1.1 would read "1.0e-3" as a string
    f.write_text(text.replace(lr, "  lr: 1e-4 ").replace("  acceleration: 4\n", "  acceleration: 8\n"))
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
    ({"gradcam": {"method": "gradcam++"}}, "gradcam.method"),
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


def test_gradcam_methods_are_the_librarys():
    """settings spells the class-activation methods out (no torch import); they must be the library's."""
    import typing

    from pipeline.roi.gradcam import METHODS
    from stages.settings import GradCAMSettings
    assert typing.get_args(GradCAMSettings.model_fields["method"].annotation) == METHODS


def test_mrnet_norms_are_the_librarys():
    import typing

    from pipeline.models.mrnet import NORMS
    from stages.settings import MRNetSettings
    assert typing.get_args(MRNetSettings.model_fields["norm"].annotation) == NORMS
