"""Specification of Asset Processing's domain: an asset is uploaded once, then described, then indexed.

Given–when–then on the plain aggregate: history is replayed, a method is called, and what it
recorded is taken with ``take_pending``. No database, no application.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from examples.licensing.asset_processing.domain import (
    Asset,
    AssetIndexed,
    AssetUploaded,
    ExtractMetadata,
    IndexAsset,
    MetadataExtracted,
    UploadAsset,
    asset_id_for,
)
from tidings.domain import DomainError, DomainEvent, EventSourcedAggregate, ValidationError

OWNER = "ada"
CHECKSUM = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
ASSET_ID = asset_id_for(OWNER, CHECKSUM)
CAPTURED = datetime(2024, 5, 1, 6, 12, tzinfo=UTC)

UPLOADED = AssetUploaded(
    owner_id=OWNER, title="Harbour at dawn", media_type="image/jpeg", size_bytes=2_400_000, checksum=CHECKSUM
)
EXTRACTED = MetadataExtracted(
    width=6000,
    height=4000,
    format="jpeg",
    camera_make="Fujifilm",
    camera_model="X-T5",
    lens_model="XF 23mm F1.4",
    iso=160,
    focal_length_mm=23.0,
    f_number=5.6,
    exposure_time="1/250",
    captured_at=CAPTURED,
)
INDEXED = AssetIndexed(keywords=("harbour", "dawn"))


def given(*history: DomainEvent, asset_id: str = ASSET_ID) -> Asset:
    """An asset rebuilt from ``history``, as the repository would load it."""
    asset = Asset(asset_id)
    asset.replay(history)
    return asset


def recorded(asset: Asset) -> list[DomainEvent]:
    """The events the last calls recorded, in order."""
    return [event for _, event in asset.take_pending()]


def extract(asset: Asset, metadata: MetadataExtracted = EXTRACTED) -> None:
    """Call extract_metadata with every field of ``metadata``."""
    asset.extract_metadata(**{field.name: getattr(metadata, field.name) for field in dataclasses.fields(metadata)})


def upload(asset: Asset, **changes: object) -> None:
    """Call upload with UPLOADED's fields, some of them changed."""
    fields = {field.name: getattr(UPLOADED, field.name) for field in dataclasses.fields(UPLOADED)}
    asset.upload(**{**fields, **changes})  # type: ignore[arg-type]


# -- upload --------------------------------------------------------------------------------------


def test_upload_records_asset_uploaded_with_every_field() -> None:
    # Given a fresh asset under the id derived from owner and checksum
    asset = given()

    # When the owner uploads the file
    upload(asset)

    # Then the upload is recorded and the asset holds its fields
    assert recorded(asset) == [UPLOADED]
    assert (asset.uploaded, asset.owner_id, asset.title, asset.version) == (True, OWNER, "Harbour at dawn", 1)


def test_asset_id_is_derived_from_owner_and_checksum() -> None:
    # Given one file and two owners / then the id repeats for the same pair and differs otherwise
    assert asset_id_for(OWNER, CHECKSUM) == ASSET_ID
    assert asset_id_for("bob", CHECKSUM) != ASSET_ID
    assert asset_id_for(OWNER, "0" * 64) != ASSET_ID
    # Where the owner ends and the checksum starts is part of the id
    assert asset_id_for("a", "b:c") != asset_id_for("a:b", "c")
    # Hex is case-insensitive: an upper-case spelling of the same digest is the same file
    assert asset_id_for(OWNER, CHECKSUM.upper()) == ASSET_ID


def test_upload_command_names_the_asset_id_a_duplicate_would_collide_on() -> None:
    # Given two uploads of the same file by the same owner, with different titles
    first = UploadAsset(owner_id=OWNER, title="One", media_type="image/jpeg", size_bytes=1, checksum=CHECKSUM)
    second = dataclasses.replace(first, title="Another title")

    # Then both target the same asset
    assert first.asset_id == second.asset_id == ASSET_ID


def test_second_upload_of_the_same_file_by_the_same_owner_is_refused_as_a_duplicate() -> None:
    # Given an uploaded asset
    asset = given(UPLOADED)

    # When the same owner uploads the same file again (under another title)
    with pytest.raises(DomainError) as refused:
        upload(asset, title="Harbour, again")

    # Then it is refused as a duplicate, naming the asset, and nothing is recorded
    assert f"Asset {ASSET_ID} was already uploaded by ada" in str(refused.value)
    assert "duplicate" in str(refused.value)
    assert recorded(asset) == []
    assert (asset.title, asset.version) == ("Harbour at dawn", 1)


def test_the_same_file_by_another_owner_is_another_asset() -> None:
    # Given ada's upload of a file
    asset_id_of_bob = asset_id_for("bob", CHECKSUM)
    assert asset_id_of_bob != ASSET_ID

    # When bob uploads the same file
    asset = given(asset_id=asset_id_of_bob)
    upload(asset, owner_id="bob")

    # Then it is accepted as his own asset
    assert recorded(asset) == [dataclasses.replace(UPLOADED, owner_id="bob")]


def test_upload_into_an_asset_whose_id_is_not_derived_is_a_programming_error() -> None:
    # Given an asset created with a random id
    asset = given(asset_id="asset-123")

    # When a file is uploaded into it / then it is refused, naming the id it should have
    with pytest.raises(ValueError, match=f"asset_id_for\\(owner_id, checksum\\) = {ASSET_ID}"):
        upload(asset)
    assert recorded(asset) == []


# -- metadata ------------------------------------------------------------------------------------


def test_metadata_is_recorded_after_the_upload() -> None:
    # Given an uploaded asset
    asset = given(UPLOADED)

    # When its metadata is extracted
    extract(asset)

    # Then MetadataExtracted is recorded with every field and the asset holds it
    assert recorded(asset) == [EXTRACTED]
    assert asset.metadata == EXTRACTED
    assert asset.version == 2


def test_metadata_before_the_upload_is_refused() -> None:
    # Given an asset that was never uploaded
    asset = given()

    # When metadata arrives / then it is refused and nothing is recorded
    with pytest.raises(DomainError, match="not uploaded yet; metadata can only be extracted after the upload"):
        extract(asset)
    assert recorded(asset) == []
    assert asset.metadata is None


def test_extracting_the_same_metadata_again_records_nothing() -> None:
    # Given an asset with its metadata (the extractor runs at least once)
    asset = given(UPLOADED, EXTRACTED)

    # When the extractor's retry reports the same values
    extract(asset)

    # Then nothing changes
    assert recorded(asset) == []
    assert asset.version == 2


def test_different_metadata_after_extraction_is_refused() -> None:
    # Given an asset with its metadata
    asset = given(UPLOADED, EXTRACTED)

    # When other values arrive / then they are refused and the first ones stay
    with pytest.raises(DomainError, match="already has metadata \\(6000x4000 jpeg\\)"):
        extract(asset, dataclasses.replace(EXTRACTED, width=100))
    assert recorded(asset) == []
    assert asset.metadata == EXTRACTED


# -- index ---------------------------------------------------------------------------------------


def test_indexing_after_metadata_records_asset_indexed() -> None:
    # Given an asset with its metadata
    asset = given(UPLOADED, EXTRACTED)

    # When it is indexed
    asset.index(keywords=("harbour", "dawn"))

    # Then AssetIndexed is recorded
    assert recorded(asset) == [INDEXED]
    assert (asset.indexed, asset.keywords, asset.version) == (True, ("harbour", "dawn"), 3)


def test_indexing_before_metadata_is_refused() -> None:
    # Given an uploaded asset without metadata
    asset = given(UPLOADED)

    # When it is indexed / then it is refused and nothing is recorded
    with pytest.raises(DomainError, match="has no metadata yet; it can only be indexed after its metadata"):
        asset.index(keywords=("harbour",))
    assert recorded(asset) == []
    assert not asset.indexed


def test_indexing_before_upload_is_refused_saying_so() -> None:
    # Given a fresh asset / when it is indexed / then the error says it is not even uploaded
    asset = given()
    with pytest.raises(DomainError, match="is not uploaded yet; it can only be indexed"):
        asset.index()
    assert recorded(asset) == []


def test_indexing_again_with_the_same_keywords_records_nothing() -> None:
    # Given an indexed asset / when the indexer's retry indexes it the same way / then nothing changes
    asset = given(UPLOADED, EXTRACTED, INDEXED)
    asset.index(keywords=("harbour", "dawn"))
    assert recorded(asset) == []
    assert asset.version == 3


def test_indexing_again_with_other_keywords_is_refused() -> None:
    # Given an indexed asset / when it is indexed under other keywords / then it is refused
    asset = given(UPLOADED, EXTRACTED, INDEXED)
    with pytest.raises(DomainError, match="already indexed under \\['harbour', 'dawn'\\]"):
        asset.index(keywords=("boats",))
    assert recorded(asset) == []


# -- history -------------------------------------------------------------------------------------


def test_state_recorded_step_by_step_equals_state_replayed_from_history() -> None:
    # Given an asset taken through the whole pipeline by its methods
    live = given()
    upload(live)
    extract(live)
    live.index(keywords=("harbour", "dawn"))
    history = recorded(live)

    # When another instance is rebuilt from the recorded events
    rebuilt = given(*history)

    # Then both have the same state and version, and the history is the three facts in order
    assert history == [UPLOADED, EXTRACTED, INDEXED]
    assert rebuilt.state() == live.state()
    assert rebuilt.version == live.version == 3


def test_asset_is_event_sourced_with_an_applier_for_each_of_its_events() -> None:
    # Given the Asset class / then it rebuilds from its stream, so each event must have an applier
    assert issubclass(Asset, EventSourcedAggregate)
    assert set(Asset.appliers()) == {AssetUploaded, MetadataExtracted, AssetIndexed}
    assert Asset.aggregate_type == "asset_processing.Asset"


# -- commands ------------------------------------------------------------------------------------

VALID_UPLOAD = UploadAsset(
    owner_id=OWNER, title="Harbour at dawn", media_type="image/jpeg", size_bytes=2_400_000, checksum=CHECKSUM
)
VALID_EXTRACTION = ExtractMetadata(
    asset_id=ASSET_ID, width=6000, height=4000, format="jpeg", iso=160, f_number=5.6, captured_at=CAPTURED
)


def test_valid_commands_pass_validation() -> None:
    # Given commands with acceptable values / when validated / then nothing is raised
    for command in (VALID_UPLOAD, VALID_EXTRACTION, IndexAsset(asset_id=ASSET_ID, keywords=("harbour",))):
        command.validate()


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        pytest.param({"owner_id": " "}, "owner_id", "must not be blank", id="blank-owner"),
        pytest.param({"title": ""}, "title", "must not be blank", id="blank-title"),
        pytest.param({"title": "x" * 201}, "title", "at most 200 characters", id="long-title"),
        pytest.param({"media_type": "application/pdf"}, "media_type", "must be one of image/heic", id="media-type"),
        pytest.param({"size_bytes": 0}, "size_bytes", "must be positive, got 0", id="empty-file"),
        pytest.param({"size_bytes": -5}, "size_bytes", "must be positive, got -5", id="negative-size"),
        pytest.param({"checksum": "abc"}, "checksum", "SHA-256 digest", id="short-checksum"),
        pytest.param({"checksum": CHECKSUM.upper()}, "checksum", "lowercase", id="uppercase-checksum"),
        pytest.param({"checksum": "g" * 64}, "checksum", "hexadecimal", id="not-hex-checksum"),
    ],
)
def test_upload_with_a_bad_field_is_refused_naming_the_field(
    changes: dict[str, object], field: str, reason: str
) -> None:
    # Given an upload with one unacceptable value
    command = dataclasses.replace(VALID_UPLOAD, **changes)  # type: ignore[arg-type]

    # When it is validated / then the error names the command and the field
    with pytest.raises(ValidationError) as refused:
        command.validate()
    assert (refused.value.field, refused.value.message_type) == (field, "UploadAsset")
    assert reason in str(refused.value)
    assert str(refused.value).startswith(f"UploadAsset.{field}: ")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"asset_id": ""}, "asset_id", id="blank-asset"),
        pytest.param({"width": 0}, "width", id="zero-width"),
        pytest.param({"height": -1}, "height", id="negative-height"),
        pytest.param({"format": "gif"}, "format", id="unknown-format"),
        pytest.param({"iso": 0}, "iso", id="zero-iso"),
        pytest.param({"focal_length_mm": 0.0}, "focal_length_mm", id="zero-focal-length"),
        pytest.param({"f_number": float("nan")}, "f_number", id="nan-aperture"),
        pytest.param({"exposure_time": " "}, "exposure_time", id="blank-exposure"),
        pytest.param({"captured_at": datetime(2024, 5, 1, 6, 12)}, "captured_at", id="naive-capture-time"),
    ],
)
def test_metadata_with_a_bad_field_is_refused_naming_the_field(changes: dict[str, object], field: str) -> None:
    # Given an extraction with one unacceptable value / when validated / then the field is named
    command = dataclasses.replace(VALID_EXTRACTION, **changes)  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as refused:
        command.validate()
    assert (refused.value.field, refused.value.message_type) == (field, "ExtractMetadata")


@pytest.mark.parametrize(
    ("command", "field"),
    [
        pytest.param(IndexAsset(asset_id=" "), "asset_id", id="blank-asset"),
        pytest.param(IndexAsset(asset_id=ASSET_ID, keywords=("harbour", "")), "keywords[1]", id="blank-keyword"),
        pytest.param(IndexAsset(asset_id=ASSET_ID, keywords=("k",) * 51), "keywords", id="too-many-keywords"),
    ],
)
def test_index_command_with_a_bad_field_is_refused_naming_the_field(command: IndexAsset, field: str) -> None:
    # Given an index command with one unacceptable value / when validated / then the field is named
    with pytest.raises(ValidationError) as refused:
        command.validate()
    assert (refused.value.field, refused.value.message_type) == (field, "IndexAsset")
