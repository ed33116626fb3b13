"""Anti-corruption layer: Asset Processing's AssetReadyForSearch, read as Licensing's RegisterLicensableAsset.

Licensing keeps only what it needs to offer an asset (its owner, title and media type), in its own
words; sizes, dimensions and camera fields of the foreign contract stay outside. The command's own
``validate()`` then refuses what Licensing cannot use (a blank id, owner, title or media type), so
garbage is stopped at the edge with the field that is wrong, before any aggregate sees it.
"""

from __future__ import annotations

from examples.licensing.contracts import AssetReadyForSearch
from examples.licensing.licensing.domain import RegisterLicensableAsset

__all__ = ["register_command_for"]


def register_command_for(event: AssetReadyForSearch) -> RegisterLicensableAsset:
    """The local command that makes the searchable asset of ``event`` licensable (validated by its handler)."""
    # Identifiers are opaque strings to us; surrounding whitespace is a producer's slip, not part
    # of the id, and keeping it would give the same asset two ids in Licensing.
    return RegisterLicensableAsset(
        asset_id=event.asset_id.strip(),
        owner_id=event.owner_id.strip(),
        title=event.title.strip(),
        media_type=event.media_type.strip(),
    )
