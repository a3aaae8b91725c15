"""A store location and a tracking URI are each parsed in one place
(:class:`pipeline.storage.location.StoreLocation`, :class:`pipeline.tracking.uri.TrackingURI`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.storage.location import StoreLocation, has_password, without_credentials
from pipeline.tracking.uri import TrackingURI


def test_store_location_local_or_remote(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for url in ("kma-store", "./a/b", "/abs/s", "file:///abs/s", "file://rel", "~/runs"):
        assert StoreLocation(url).is_local and StoreLocation(url).scheme == "file"
    for url in ("s3://bucket/p", "memory://x", "gs://b"):
        loc = StoreLocation(url)
        assert not loc.is_local and loc.absolute() == url
        with pytest.raises(ValueError):
            loc.path
    assert StoreLocation("~/runs").absolute() == str(tmp_path / "home" / "runs")
    assert StoreLocation(Path("rel")).url == "rel"


def test_store_location_canonical_resolves_links_and_slashes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert StoreLocation("link").absolute() == str(tmp_path / "link")        # what tasks get
    assert StoreLocation("link").canonical() == str((tmp_path / "real").resolve())  # what MLflow tags
    assert StoreLocation("s3://bucket/p/").canonical() == "s3://bucket/p"


def test_credentials_never_shown():
    assert without_credentials("postgresql://kma:secret@db:5432/mlflow") == "postgresql://db:5432/mlflow"
    assert without_credentials("s3://AKIA:key@bucket/p") == "s3://bucket/p"
    assert without_credentials("http://mlflow:5000") == "http://mlflow:5000"
    assert StoreLocation("s3://u:p@bucket/x").shown == "s3://bucket/x"
    assert TrackingURI("postgresql://kma:secret@db/mlflow").shown == "postgresql://db/mlflow"
    assert has_password("postgresql://kma:secret@db/mlflow") and not has_password("postgresql://kma@db/mlflow")
    assert has_password("http://[broken")       # unparsable: treated as secret


def test_tracking_uri_absolute_and_its_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert TrackingURI("sqlite:///m.db").absolute() == f"sqlite:///{tmp_path}/m.db"
    assert TrackingURI("sqlite:///a/../b/m.db?timeout=5").absolute() == f"sqlite:///{tmp_path}/b/m.db?timeout=5"
    assert TrackingURI("sqlite:///~/m.db").absolute() == f"sqlite:///{tmp_path}/home/m.db"
    assert TrackingURI("sqlite:///m.db?timeout=5").sqlite_path == tmp_path / "m.db"
    for other in ("sqlite:///:memory:", "http://mlflow:5000", "postgresql://u@h/db", "sqlite:////abs/m.db"):
        assert TrackingURI(other).absolute() == other
    assert TrackingURI("http://mlflow:5000").sqlite_path is None
