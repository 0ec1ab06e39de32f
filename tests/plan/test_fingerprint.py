"""A disk dataset enters run identity through a fingerprint of its content, cached beside the store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

import mtlprune.plan.fingerprint as fp_module
from mtlprune.cli import main
from mtlprune.plan.fingerprint import (
    DataFingerprintError,
    cache_path,
    data_fingerprint,
    resolve_data,
    resolve_data_lenient,
)
from mtlprune.spec import ConfigError, MatrixSpec, canonical_json, parse_matrix, semantic_dump
from tests.helpers import TASKS3, tiny_matrix, tiny_matrix_dict

OLD_NS = 1_600_000_000 * 10**9  # an mtime well before any scan: cached digests are trusted


def _copy(src: Path, dest: Path) -> Path:
    """A copy of a dataset root whose files all carry an old mtime (not "racily clean")."""
    shutil.copytree(src, dest)
    for path in dest.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(OLD_NS, OLD_NS))
    return dest


def _golden(root: Path, dataset: str = "nyuv2") -> str:
    """The fingerprint recomputed from the documented recipe, with hashlib and json only."""
    if dataset == "nyuv2":
        listing = json.loads((root / "nyu_v2_3task.json").read_text())
        names = {"nyu_v2_3task.json"} | {p for split in ("train", "test") for e in listing[split] for p in e}
    else:
        listing = json.loads((root / "taskonomy.json").read_text())
        names = {"taskonomy.json", "semseg_prior_factor.npy"}
        names |= {f"{split}/{p}" for split in ("train", "test") for e in listing[split] for p in e}
    files = sorted(
        [n, (root / n).stat().st_size, hashlib.sha256((root / n).read_bytes()).hexdigest()] for n in names
    )
    payload = {"format": "mtl-prunebench data fingerprint 1", "files": files}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _disk_matrix(root: Path | str, **data) -> MatrixSpec:
    disk = {
        "dataset": "nyuv2",
        "tasks": TASKS3,
        "source": "disk",
        "root": str(root),
        "crop": [32, 32],
        **data,
    }
    synthetic = tiny_matrix_dict()["datasets"][0]
    return parse_matrix(tiny_matrix_dict(datasets=[disk, synthetic]), "<disk>")


def _ids(matrix: MatrixSpec, dataset_index: int) -> list[str]:
    data = matrix.datasets[dataset_index]
    cells = [c for c in matrix.expand() if c.data == data]
    return [c.run_id for c in cells] + [c.dense().run_id for c in cells]


@pytest.fixture()
def counted(monkeypatch) -> list[Path]:
    """Every file whose content the fingerprint reads, in order."""
    calls: list[Path] = []
    real = fp_module.file_digest

    def digest(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(fp_module, "file_digest", digest)
    return calls


@pytest.fixture(scope="module")
def taskonomy_root(tmp_path_factory) -> Path:
    from mtlprune.datasets.synthetic import write_taskonomy

    root = tmp_path_factory.mktemp("tk") / "taskonomy"
    return write_taskonomy(root, n_train=2, n_test=1, height=16, width=16, seed=0)


# ----------------------------------------------------------------------------------------- the digest


def test_fingerprint_follows_the_documented_recipe(synthetic_root, tmp_path):
    result = data_fingerprint("nyuv2", synthetic_root, tmp_path / "store")
    assert result.digest == _golden(synthetic_root)
    listing = json.loads((synthetic_root / "nyu_v2_3task.json").read_text())
    assert len(result.files) == 1 + 4 * (len(listing["train"]) + len(listing["test"]))
    assert result.root == synthetic_root.resolve() and result.recomputed == len(result.files)


def test_taskonomy_fingerprint_covers_split_folders_and_prior_factor(taskonomy_root, tmp_path):
    root = _copy(taskonomy_root, tmp_path / "tk")
    before = data_fingerprint("taskonomy", root, tmp_path / "store")
    assert before.digest == _golden(root, "taskonomy")
    assert {"semseg_prior_factor.npy", "taskonomy.json"} <= {f.path for f in before.files}
    assert all(f.path.startswith(("train/", "test/")) for f in before.files if "/" in f.path)
    prior = root / "semseg_prior_factor.npy"
    data = bytearray(prior.read_bytes())
    data[-1] ^= 1
    prior.write_bytes(bytes(data))
    after = data_fingerprint("taskonomy", root, tmp_path / "store")
    assert after.digest != before.digest and after.digest == _golden(root, "taskonomy")


def test_same_data_elsewhere_keeps_fingerprint_and_run_ids(synthetic_root, tmp_path):
    a, b = _copy(synthetic_root, tmp_path / "a" / "nyu"), _copy(synthetic_root, tmp_path / "b" / "copy")
    store = tmp_path / "store"
    ra, rb = resolve_data(_disk_matrix(a), store), resolve_data(_disk_matrix(b), store)
    assert ra.datasets[0].fingerprint == rb.datasets[0].fingerprint == _golden(synthetic_root)
    assert ra.datasets[0].root == str(a.resolve()) and rb.datasets[0].root == str(b.resolve())
    assert [c.run_id for c in ra.expand()] == [c.run_id for c in rb.expand()]
    assert [d.run_id for d in ra.dense_stages()] == [d.run_id for d in rb.dense_stages()]
    # the identity holds the fingerprint and never the root
    identity = canonical_json(semantic_dump(ra.expand()[0]))
    assert f'"fingerprint":"{_golden(synthetic_root)}"' in identity and str(a) not in identity
    assert len(list((store / "data" / "fingerprints").glob("*.json"))) == 2  # one cache per root


def test_one_changed_byte_changes_fingerprint_and_every_run_id_of_that_dataset(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path / "nyu")
    store = tmp_path / "store"
    before = resolve_data(_disk_matrix(root), store)  # warms the cache
    label = root / json.loads((root / "nyu_v2_3task.json").read_text())["train"][0][3]  # a depth .npy
    data = bytearray(label.read_bytes())
    data[-1] ^= 1  # same size, new content
    label.write_bytes(bytes(data))
    after = resolve_data(_disk_matrix(root), store)
    assert after.datasets[0].fingerprint == _golden(root) != before.datasets[0].fingerprint
    old, new = _ids(before, 0), _ids(after, 0)
    assert len(set(old)) == 4 + 1 and not set(old) & set(new)  # 4 cells and their dense stage
    assert _ids(before, 1) == _ids(after, 1)  # the synthetic dataset of the same matrix is untouched


# ------------------------------------------------------------------------------------------ the cache


def test_unchanged_root_is_served_from_the_cache(synthetic_root, tmp_path, counted):
    root = _copy(synthetic_root, tmp_path / "nyu")
    first = data_fingerprint("nyuv2", root, tmp_path / "store")
    assert len(counted) == len(first.files) == first.recomputed
    counted.clear()
    cache_file = cache_path(tmp_path / "store", root.resolve())
    written = cache_file.stat().st_mtime_ns
    second = data_fingerprint("nyuv2", root, tmp_path / "store")
    assert counted == [] and second.digest == first.digest
    assert (second.cached, second.recomputed) == (len(first.files), 0)
    assert cache_file.stat().st_mtime_ns == written  # nothing changed: the cache is not rewritten
    cache = json.loads(cache_file.read_text())
    assert cache["root"] == str(root.resolve()) and cache["fingerprint"] == first.digest
    entry = cache["files"]["nyu_v2_3task.json"]
    listing = root / "nyu_v2_3task.json"
    assert entry == {
        "size": listing.stat().st_size,
        "mtime_ns": OLD_NS,
        "sha256": hashlib.sha256(listing.read_bytes()).hexdigest(),
    }


def test_touched_file_is_rehashed_alone_and_keeps_the_fingerprint(synthetic_root, tmp_path, counted):
    root = _copy(synthetic_root, tmp_path / "nyu")
    first = data_fingerprint("nyuv2", root, tmp_path / "store")
    counted.clear()
    touched = root / "seg" / "0000.png"
    os.utime(touched, ns=(OLD_NS + 10**12, OLD_NS + 10**12))
    second = data_fingerprint("nyuv2", root, tmp_path / "store")
    assert counted == [touched.resolve()]
    assert second.digest == first.digest and (second.cached, second.recomputed) == (len(first.files) - 1, 1)


def test_a_file_modified_just_before_a_scan_is_not_trusted_from_the_cache(synthetic_root, tmp_path, counted):
    root = _copy(synthetic_root, tmp_path / "nyu")
    fresh = root / "depth" / "0000.npy"
    now = time.time_ns()
    os.utime(fresh, ns=(now, now))  # an edit in the same timestamp tick would leave size and mtime alike
    data_fingerprint("nyuv2", root, tmp_path / "store")
    counted.clear()
    data_fingerprint("nyuv2", root, tmp_path / "store")
    assert counted == [fresh.resolve()]


def test_a_corrupt_cache_is_recomputed(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path / "nyu")
    cache_file = cache_path(tmp_path / "store", root.resolve())
    cache_file.parent.mkdir(parents=True)
    cache_file.write_text("{not json")
    result = data_fingerprint("nyuv2", root, tmp_path / "store")
    assert result.digest == _golden(root) and result.cached == 0
    assert json.loads(cache_file.read_text())["fingerprint"] == result.digest


# ------------------------------------------------------------------------------------------- failures


def test_a_missing_listed_file_fails_naming_it(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path / "nyu")
    (root / "normal_mask" / "0002.png").unlink()
    with pytest.raises(DataFingerprintError, match=r"normal_mask/0002\.png: file listed in nyu_v2_3task"):
        data_fingerprint("nyuv2", root, tmp_path / "store")
    with pytest.raises(DataFingerprintError, match=r"datasets\[0\] \(nyuv2\).*normal_mask/0002\.png"):
        resolve_data(_disk_matrix(root), tmp_path / "store")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xff\xfe{\x00", "not valid JSON"),
        (b'{"train": [["img/0000.png"]], "test": []}', "must be a list of 4 relative paths"),
    ],
)
def test_a_bad_listing_fails_naming_it(synthetic_root, tmp_path, content, problem):
    root = _copy(synthetic_root, tmp_path / "nyu")
    (root / "nyu_v2_3task.json").write_bytes(content)
    with pytest.raises(DataFingerprintError, match="nyu_v2_3task.json") as info:
        data_fingerprint("nyuv2", root, tmp_path / "store")
    assert problem in str(info.value) and str(root.resolve()) in str(info.value)


def test_a_pinned_wrong_fingerprint_fails_naming_both_digests(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path / "nyu")
    wrong = "0" * 64
    with pytest.raises(DataFingerprintError) as info:
        resolve_data(_disk_matrix(root, fingerprint=wrong), tmp_path / "store")
    message = str(info.value)
    assert wrong in message and _golden(root) in message and str(root.resolve()) in message


def test_a_pin_mismatch_names_the_changed_files_when_the_cache_knows_them(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path / "nyu")
    store = tmp_path / "store"
    pinned = _golden(root)
    matrix = resolve_data(_disk_matrix(root, fingerprint=pinned), store)  # matches: the pin is kept
    assert matrix.datasets[0].fingerprint == pinned
    (root / "seg" / "0001.png").write_bytes(b"another label file")
    with pytest.raises(DataFingerprintError, match=r"differ from the pinned data: seg/0001\.png\.") as info:
        resolve_data(_disk_matrix(root, fingerprint=pinned), store)
    assert pinned in str(info.value) and _golden(root) in str(info.value)


def test_fingerprint_field_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="64 lowercase hex digits"):
        _disk_matrix(tmp_path, fingerprint="AB" * 32)
    with pytest.raises(ConfigError, match="64 lowercase hex digits"):
        _disk_matrix(tmp_path, fingerprint="ab")
    synthetic = {**tiny_matrix_dict()["datasets"][0], "fingerprint": "0" * 64}
    with pytest.raises(ConfigError, match="fingerprint is for source 'disk'"):
        parse_matrix(tiny_matrix_dict(datasets=[synthetic]), "<x>")


# ------------------------------------------------------------------------------- synthetic and workers


def test_synthetic_specs_are_unaffected(tmp_path):
    matrix = tiny_matrix()
    assert matrix.expand()[0].run_id == "e29b2dd407e6a45c"  # pinned in test_spec_identity
    assert "fingerprint" not in canonical_json(semantic_dump(matrix.expand()[0]))
    assert resolve_data(matrix, tmp_path / "store") == matrix
    assert not (tmp_path / "store").exists()  # nothing to fingerprint, nothing written


def test_workers_revalidate_the_filled_in_matrix_without_recomputing(synthetic_root, tmp_path, monkeypatch):
    resolved = resolve_data(_disk_matrix(_copy(synthetic_root, tmp_path / "nyu")), tmp_path / "store")

    def no_reading(path: Path) -> str:
        raise AssertionError(f"a worker re-read {path}")

    monkeypatch.setattr(fp_module, "file_digest", no_reading)
    again = MatrixSpec.model_validate(json.loads(json.dumps(resolved.model_dump(mode="json"))))
    assert again.datasets[0].fingerprint == resolved.datasets[0].fingerprint
    assert [c.run_id for c in again.expand()] == [c.run_id for c in resolved.expand()]


# ---------------------------------------------------------------------------------------------- CLI


def _config(tmp_path: Path, root: Path | str, **data) -> Path:
    disk = {
        "dataset": "nyuv2",
        "tasks": TASKS3,
        "source": "disk",
        "root": str(root),
        "crop": [32, 32],
        **data,
    }
    path = tmp_path / "disk.yaml"
    path.write_text(yaml.safe_dump(tiny_matrix_dict(name="disk", datasets=[disk])))
    return path


def test_cli_data_fingerprint_prints_the_digest(synthetic_root, tmp_path, capsys):
    root = _copy(synthetic_root, tmp_path / "nyu")
    args = ["data", "fingerprint", "--dataset", "nyuv2", "--root", str(root), "--store", str(tmp_path / "s")]
    assert main(args) == 0
    out, err = capsys.readouterr()
    listing = json.loads((root / "nyu_v2_3task.json").read_text())
    n_files = 1 + 4 * (len(listing["train"]) + len(listing["test"]))
    assert out == _golden(root) + "\n"
    assert f"{n_files} files" in err and f"0 digest(s) from the cache, {n_files} recomputed" in err
    assert main(args) == 0
    assert f"{n_files} digest(s) from the cache, 0 recomputed" in capsys.readouterr().err
    assert main([*args[:5], str(tmp_path / "none")]) == 2
    assert "none is not a directory" in capsys.readouterr().err


def test_plan_prints_fingerprinted_ids(synthetic_root, tmp_path, capsys):
    root = _copy(synthetic_root, tmp_path / "nyu")
    assert main(["plan", str(_config(tmp_path, root)), "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    resolved = resolve_data(_disk_matrix(root), tmp_path / "other-store")
    for cell in [c for c in resolved.expand() if c.data.source == "disk"]:
        assert cell.run_id in out
    assert "(unknown)" not in out and f"data nyuv2 (disk): {root.resolve()}: found 8 train / 4 test" in out


def test_plan_without_the_data_says_the_ids_are_unknown(tmp_path, capsys):
    missing = tmp_path / "missing"
    config = _config(tmp_path, missing)
    assert main(["plan", str(config), "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert "1 dense stage(s), 4 cell(s)" in out and out.count("(unknown)") == 1 + 2 * 4  # id + needs
    assert "run ids of datasets[0] (nyuv2) are unknown" in out and f"{missing} is not a directory" in out
    assert "What the run needs" in out and f"MISSING: {missing / 'nyu_v2_3task.json'} does not exist" in out
    unresolved = parse_matrix(yaml.safe_load(config.read_text()), "<x>")
    assert all(c.run_id not in out for c in unresolved.expand())  # no id without the fingerprint
    assert "estimate: 5 pending stage(s)" in out


def test_plan_without_the_data_uses_a_pinned_fingerprint(synthetic_root, tmp_path, capsys):
    pinned = _golden(synthetic_root)
    config = _config(tmp_path, tmp_path / "missing", fingerprint=pinned)
    assert main(["plan", str(config), "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    matrix, unknown = resolve_data_lenient(parse_matrix(yaml.safe_load(config.read_text()), "<x>"), tmp_path)
    assert unknown == {} and "(unknown)" not in out
    assert all(c.run_id in out for c in matrix.expand())
    with_data = resolve_data(_disk_matrix(_copy(synthetic_root, tmp_path / "nyu")), tmp_path / "s")
    assert {c.run_id for c in matrix.expand()} <= {c.run_id for c in with_data.expand()}


def test_status_and_run_without_the_data_fail_clearly(tmp_path, capsys):
    config = _config(tmp_path, tmp_path / "missing")
    assert main(["status", str(config), "--store", str(tmp_path / "store")]) == 2
    assert "run ids of datasets[0] (nyuv2) are unknown" in capsys.readouterr().err
    assert main(["run", str(config), "--store", str(tmp_path / "store"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "datasets[0] (nyuv2): cannot fingerprint the data" in err and "missing is not a directory" in err


@pytest.mark.slow
def test_run_records_fingerprint_and_root_in_spec_json(synthetic_root, tmp_path, capsys):
    root = _copy(synthetic_root, tmp_path / "nyu")
    disk = {
        "dataset": "nyuv2",
        "tasks": ["segment_semantic"],
        "source": "disk",
        "root": str(root),
        "crop": [32, 32],
    }
    small = tiny_matrix_dict(
        name="disk", datasets=[disk], methods=[{"name": "magnitude"}], sparsities=[0.5],
        train={"steps": 2, "batch_size": 4}, finetune={"steps": 1, "batch_size": 4},
        runtime={"device": "cpu", "num_threads": 1},
    )  # fmt: skip
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(small))
    store = tmp_path / "store"
    assert main(["run", str(config), "--store", str(store), "--no-progress"]) == 0
    capsys.readouterr()
    resolved = resolve_data(parse_matrix(small, "<small>"), store)
    (cell,) = resolved.expand()
    for run_id in (cell.run_id, cell.dense().run_id):
        spec = json.loads((store / "runs" / run_id / "spec.json").read_text())
        assert spec["spec"]["data"]["fingerprint"] == _golden(root)
        assert spec["spec"]["data"]["root"] == str(root.resolve())
        assert (
            spec["identity"]["data"]["fingerprint"] == _golden(root)
            and "root" not in spec["identity"]["data"]
        )
    assert main(["status", str(config), "--store", str(store)]) == 0
    assert "2 done" in capsys.readouterr().out
