"""cl.data.sources.folders: the shared root check and ImageFolder-like listing of the file-backed loaders."""

from __future__ import annotations

from pathlib import Path

import pytest

from cl.data.sources import DatasetNotFoundError, load_tiny_imagenet
from cl.data.sources.folders import list_images, require_root
from tests.data.test_sources_tiny_imagenet import WNIDS, write_tree


def test_list_images_sorted_by_extension_hidden_skipped(tmp_path: Path) -> None:
    for name in ("b.JPG", "a.png", "._a.png", ".c.jpg", "notes.txt", "c.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    got = [Path(p).name for p in list_images(str(tmp_path), (".jpg", ".jpeg", ".png"))]
    assert got == ["a.png", "b.JPG", "c.jpeg"]


def test_require_root_messages(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    with pytest.raises(DatasetNotFoundError, match="cannot fetch Foo automatically") as err:
        require_root("foo", str(root), "get it from x", download=True, name="Foo")
    assert err.value.key == "foo" and err.value.path == str(root) and "get it from x" in str(err.value)
    with pytest.raises(DatasetNotFoundError) as err:
        require_root("foo", str(root), "get it from x", download=False, name="Foo")
    assert "automatically" not in str(err.value)
    root.mkdir()
    assert require_root("foo", str(root), "how", download=True, name="Foo") == str(root)


def test_tiny_imagenet_ignores_macos_resource_files(tmp_path: Path) -> None:
    root = write_tree(tmp_path)
    (root / "train" / WNIDS[0] / "images" / f"._{WNIDS[0]}_0.JPEG").write_bytes(b"\x00\x05\x16\x07")
    data = load_tiny_imagenet(str(tmp_path), augment=False)
    assert len(data.train) == 9 and not any(Path(p).name.startswith(".") for p in data.train.paths)
