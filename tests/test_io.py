"""dcl.io: atomic writes never leave a half file; JSON errors say file, line and what."""

import json
from pathlib import Path

import pytest

from dcl.io import InputError, atomic_path, atomic_write_json, read_json, read_yaml


def test_failed_write_leaves_destination_untouched(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_json_nan_is_written_as_null(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"AP": float("nan"), "v": [1.5, float("inf")]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"AP": None, "v": [1.5, None]}


def test_truncated_json_names_file_and_position(tmp_path):
    path = tmp_path / "pred.json"
    path.write_text('[{"image_id": 1,\n "score": 0.5')
    with pytest.raises(InputError, match=r"pred.json: invalid JSON at line 2.*truncated"):
        read_json(path)


def test_missing_json_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_json(tmp_path / "nope.json", "predictions file")


def test_yaml_errors_name_the_file_and_the_problem(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("a: [1, 2]\n")
    assert read_yaml(good) == {"a": [1, 2]}
    with pytest.raises(InputError, match=r"^published numbers file not found: .*nope.yaml \(pass --published\)$"):
        read_yaml(tmp_path / "nope.yaml", "published numbers file", missing_hint=" (pass --published)")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(InputError, match=r"(?s)workflow config .*bad.yaml is not valid YAML: .*bad.yaml\", line 2"):
        read_yaml(bad, "workflow config")
    with pytest.raises(InputError, match="cannot be read"):
        read_yaml(tmp_path, "workflow config")  # a directory
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="binary.yaml cannot be read"):
        read_yaml(binary)


def test_stale_temporaries_of_atomic_writes_are_found_and_only_they(tmp_path, monkeypatch):
    from dcl.io import remove_stale_temporaries, staging_directory

    # A killed process leaves exactly the temporary that atomic_path created: keep it from being removed.
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "sub" / "model.pth") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    monkeypatch.undo()
    staging = tmp_path / ".staging.zz9y8x7w"  # a staging_directory of a killed process
    staging.mkdir()
    (staging / "coco_instances_results.json").write_text("[")
    kept = [
        tmp_path / "sub" / "model.pth",
        tmp_path / ".hidden",
        tmp_path / ".model.pth.short.pth",
        tmp_path / ".run.json.ab12cd_e.txt",
    ]
    for path in kept:
        path.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([staging, tmp])
    assert all(path.exists() for path in kept) and not tmp.exists()
    with staging_directory(tmp_path / "out") as folder:
        (folder / "a.json").write_text("{}")
        assert not (tmp_path / "out" / "a.json").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.json"]
