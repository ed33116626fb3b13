"""Compliance's write side: the Application that opens, reviews and closes investigations."""

from __future__ import annotations

from examples.licensing.compliance.domain import CloseInvestigation, Investigation, OpenInvestigation, RequestReview
from examples.licensing.contracts import register_contracts
from tidings.app import Application, UnitOfWork
from tidings.messaging import MessageRegistry
from tidings.store import Store

__all__ = ["CONTEXT", "compliance_application"]

#: The context's name: its Application's name and the ``source`` of every envelope it writes.
CONTEXT = "compliance"


def compliance_application(store: Store, registry: MessageRegistry | None = None) -> Application:
    """The Compliance Application on ``store``, with a handler for each of its three commands."""
    app = Application(store, name=CONTEXT, registry=register_contracts(registry or MessageRegistry()))

    @app.command_handler(OpenInvestigation)
    async def open_investigation(command: OpenInvestigation, uow: UnitOfWork) -> Investigation:
        # One case file per license: a first infringement creates it, later ones (from Licensing or
        # a partner, before or after closing) add to it; the aggregate decides what that means.
        investigation = await uow.find(Investigation, command.investigation_id)
        if investigation is None:
            investigation = uow.add(Investigation(command.investigation_id))
        investigation.open(
            license_id=command.license_id,
            asset_id=command.asset_id,
            buyer_id=command.buyer_id,
            used=command.used,
            allowed=command.allowed,
            source=command.source,
        )
        return investigation

    @app.command_handler(RequestReview)
    async def request_review(command: RequestReview, uow: UnitOfWork) -> Investigation:
        investigation = await uow.get(Investigation, command.investigation_id)
        investigation.request_review(reviewer=command.reviewer, note=command.note)
        return investigation

    @app.command_handler(CloseInvestigation)
    async def close_investigation(command: CloseInvestigation, uow: UnitOfWork) -> Investigation:
        investigation = await uow.get(Investigation, command.investigation_id)
        investigation.close(outcome=command.outcome, reason=command.reason)
        return investigation

    return app
