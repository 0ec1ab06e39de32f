"""The data catalogue: every hostile file in a dataset root is one problem line naming its path.

One row per case (tests/hardening/README.md): a function damages a private copy of a small synthetic root
and returns the path that must be named and the fragments its problem line must hold. ``mtlprune data
verify`` must report it, go on checking the rest (each row also deletes a later sample's file, which must
be reported too, unless the listing itself is unreadable) and exit 1; the loader a run uses must raise a
DataFormatError naming the same path.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from mtlprune.cli import main
from mtlprune.datasets.base import DataFormatError
from mtlprune.datasets.synthetic import write_taskonomy
from mtlprune.datasets.verify import verify
from mtlprune.registry import DATASETS

LIMIT = f"{Image.MAX_IMAGE_PIXELS:,}-pixel limit (PIL.Image.MAX_IMAGE_PIXELS)"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int, colour: int = 2) -> bytes:
    """A small, well-formed PNG whose IHDR claims ``width`` × ``height`` pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


@dataclass(frozen=True)
class Case:
    id: str
    dataset: str
    damage: Callable[[Path, dict], tuple[Path, tuple[str, ...]]]  # (root, listing) -> (named path, fragments)
    listing_readable: bool = True  # False: verify cannot go past the listing


def _files(dataset: str, root: Path, listing: dict, split: str, index: int) -> list[Path]:
    folder = {"nyuv2": "", "taskonomy": {"train": "train", "test": "test"}[split]}[dataset]
    return [root / folder / p for p in listing[split][index]]


def _bomb(dataset: str, field: int, width: int, height: int, colour: int = 2):
    def damage(root: Path, listing: dict) -> tuple[Path, tuple[str, ...]]:
        path = _files(dataset, root, listing, "train", 1)[field]
        path.write_bytes(bomb_png(width, height, colour))
        claimed = f"the image header claims {height}×{width} (H×W, {width * height:,} pixels)"
        return path, (claimed, LIMIT, "a corrupt file or a decompression bomb; not decoded")

    return damage


def _not_utf8(listing_name: str):
    def damage(root: Path, listing: dict) -> tuple[Path, tuple[str, ...]]:
        path = root / listing_name
        text = json.dumps(listing).encode()
        path.write_bytes(b'{"note": "caf\xe9", ' + text[1:])  # Latin-1 é at byte 13
        return path, ("not UTF-8 text (byte 0xe9 at offset 13: invalid continuation byte)", "UTF-8 JSON")

    return damage


CASES = [
    # a PNG whose header claims 30000×30000: Pillow refuses it (DecompressionBombError) without the path
    Case("nyuv2-bomb-image", "nyuv2", _bomb("nyuv2", 0, 30000, 30000)),
    Case("nyuv2-bomb-label", "nyuv2", _bomb("nyuv2", 1, 30000, 30000, colour=0)),
    # between 1× and 2× the limit Pillow only warns and decodes; refused all the same
    Case("nyuv2-bomb-just-over-the-limit", "nyuv2", _bomb("nyuv2", 2, 10000, 10000)),
    Case("taskonomy-bomb-rgb", "taskonomy", _bomb("taskonomy", 0, 30000, 30000)),
    # a listing that is not UTF-8: named, with the offset of the first bad byte
    Case("nyuv2-listing-not-utf8", "nyuv2", _not_utf8("nyu_v2_3task.json"), listing_readable=False),
    Case("taskonomy-listing-not-utf8", "taskonomy", _not_utf8("taskonomy.json"), listing_readable=False),
]


@pytest.fixture(scope="module")
def taskonomy_root(tmp_path_factory) -> Path:
    return write_taskonomy(
        tmp_path_factory.mktemp("tk") / "tiny", n_train=4, n_test=2, height=32, width=40, seed=0
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_data_case(case, synthetic_root, taskonomy_root, tmp_path, capsys):
    source = {"nyuv2": synthetic_root, "taskonomy": taskonomy_root}[case.dataset]
    root = Path(shutil.copytree(source, tmp_path / "root"))
    cls = DATASETS.get(case.dataset)
    listing = json.loads((root / cls.listing_name).read_text())
    other = _files(case.dataset, root, listing, "train", 2)[0]  # a later sample's image, deleted below
    named, fragments = case.damage(root, listing)
    other.unlink()

    assert main(["data", "verify", "--dataset", case.dataset, "--root", str(root)]) == 1
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines()]
    problem = [line for line in lines if line.startswith(str(named))]
    assert len(problem) == 1, out  # exactly one line, not wrapped
    for fragment in fragments:
        assert fragment in problem[0], f"{fragment!r} not in {problem[0]!r}"
    if case.listing_readable:  # verify went on: the later sample's missing file is reported too
        assert f"{other}: file listed in {cls.listing_name} does not exist" in lines, out
        assert "2 problem(s):" in out
    else:
        assert "1 problem(s):" in out

    # The loader a run uses names the same path (the damaged sample is train[1]).
    with pytest.raises(DataFormatError) as info:
        cls(root, "train", tasks=cls.tasks).load_raw(1)
    assert str(info.value).startswith(f"{named}: "), info.value
    for fragment in fragments:
        assert fragment in str(info.value)


def test_an_unforeseen_loader_error_is_one_problem_and_verify_goes_on(synthetic_root, monkeypatch):
    """A loader bug on one sample is reported with the listing entry; the other samples are still read."""
    cls = DATASETS.get("nyuv2")
    real = cls.load_raw

    def flaky(self, index):
        if self.split == "train" and index == 1:
            raise RuntimeError("boom")
        return real(self, index)

    monkeypatch.setattr(cls, "load_raw", flaky)
    report = verify("nyuv2", synthetic_root)
    listing = json.loads((synthetic_root / cls.listing_name).read_text())
    assert report.problems == [
        f"{synthetic_root / cls.listing_name}: train[1] {listing['train'][1]}: RuntimeError: boom"
    ]
    assert report.counts == {"train": 8, "test": 4} and sum(report.sizes.values()) == 11
