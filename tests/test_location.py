"""tenantlora._location: a record's uri stays inside its tenant's store directory (hypothesis)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantlora._location import check_location, local_path
from tenantlora.errors import AdapterLocationError

PARTS = st.sampled_from(["..", ".", "acme", "globex", "acme-evil", "adapters", "v1", "", "x"])


@settings(max_examples=300, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.lists(PARTS, min_size=1, max_size=8), st.booleans())
def test_accepted_exactly_when_the_resolved_path_is_inside(
    tmp_path: Path, parts: list[str], absolute: bool
) -> None:
    root = tmp_path / "store"
    (root / "acme").mkdir(parents=True, exist_ok=True)
    (root / "globex").mkdir(exist_ok=True)
    relative = os.path.join(*parts)
    uri = str(root / "acme" / relative) if absolute else str(root / relative)
    inside = os.path.commonpath([os.path.realpath(uri), str((root / "acme").resolve())]) == str(
        (root / "acme").resolve()
    )
    if inside:
        check_location(root, "acme", uri)
    else:
        with pytest.raises(AdapterLocationError) as caught:
            check_location(root, "acme", uri)
        assert caught.value.tenant == "acme"


def test_symlinks_are_resolved_before_the_check(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "globex" / "v1").mkdir(parents=True)
    (root / "acme").mkdir()
    (root / "acme" / "v1").symlink_to(root / "globex" / "v1")
    with pytest.raises(AdapterLocationError, match="must be inside"):
        check_location(root, "acme", str(root / "acme" / "v1"))


def test_remote_and_missing_uris(tmp_path: Path) -> None:
    check_location(tmp_path, "acme", None)
    with pytest.raises(AdapterLocationError, match="'s3'"):
        check_location(tmp_path, "acme", "s3://bucket/acme/v1")
    assert local_path("file:///a%20b/c") == "/a b/c"
    assert local_path("s3://x/y") is None
    assert local_path("C:\\adapters") == "C:\\adapters"
