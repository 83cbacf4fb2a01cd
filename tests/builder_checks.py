"""What the builders' layout tests share: a split's records, and a refused build that
leaves no dataset behind."""

import glob
import os

import pytest

from jaxsurg.data import builders


def records(builder, split: str = "train") -> list[dict]:
    """Every record of ``split`` of a built dataset, decoded, in storage order."""
    source = builder.as_data_source()[split]
    return [source[i] for i in range(len(source))]


def expect_error(tmp_path, name: str, root: str, error, *patterns, config=None) -> None:
    """Building ``name`` from ``root`` raises ``error`` whose message holds every pattern, and
    leaves neither a finished version folder nor an ``incomplete`` one."""
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(error) as info:
        builders.prepare(name, data_dir=data_dir, manual_dir=root, config=config)
    for pattern in patterns:
        assert pattern in str(info.value), (pattern, str(info.value))
    assert not glob.glob(os.path.join(data_dir, name, "*", "1.0.0"))
    assert not glob.glob(os.path.join(data_dir, "**", "*incomplete*"), recursive=True)
