"""Contracts as a product: what an application publishes and reads, exported, locked, checked and documented.

This layer reads applications, consumers and sagas as they are wired (it runs none of them):
:mod:`~tidings.contracts.catalog` finds the contracts and who sends and receives them,
:mod:`~tidings.contracts.schema` writes JSON Schema and AsyncAPI, :mod:`~tidings.contracts.compat`
locks the schemas and gives compatibility verdicts, :mod:`~tidings.contracts.docs` writes the
readable catalog.
"""

from tidings.contracts.catalog import Catalog, Contract, catalog_of
from tidings.contracts.compat import Change, Verdict, check, lock
from tidings.contracts.schema import asyncapi_document, json_schema

__all__ = ["Catalog", "Change", "Contract", "Verdict", "asyncapi_document", "catalog_of", "check", "json_schema", "lock"]
