"""dcl.names is the one list of datasets, inits, methods and models; the workflow schema repeats
them as enums (a JSON schema cannot import Python), so they must agree."""

from __future__ import annotations

from pathlib import Path

import yaml

from dcl import names

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def test_schema_enums_are_the_names():
    defs = yaml.safe_load(SCHEMA.read_text())["$defs"]
    for key, mapping in (
        ("dataset", names.DATASETS),
        ("init", names.INITS),
        ("method", names.METHODS),
        ("detector", names.MODELS),
    ):
        assert set(defs[key]["enum"]) == set(mapping), key
        assert len(defs[key]["enum"]) == len(mapping), key


def test_error_kinds_come_from_names():
    from dcl.evaluation import errors

    assert errors.ERROR_KINDS is names.ERROR_KINDS and errors.DEFAULT_TYPES == names.ERROR_KINDS


def test_schema_defaults_of_a_models_identity_are_the_names():
    """An experiment without `backbone` / `schedule` is the model the report reads a record without them as."""
    defs = yaml.safe_load(SCHEMA.read_text())["$defs"]
    assert defs["backbone"]["default"] == names.DEFAULT_BACKBONE
    assert defs["schedule"]["default"] is None and defs["schedule"]["pattern"] == names.SCHEDULE_PATTERN
