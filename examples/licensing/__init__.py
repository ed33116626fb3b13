"""The reference platform: media licensing across three bounded contexts that share only integration-event contracts.

Asset Processing, Licensing and Compliance each live in their own sub-package with ``domain/``,
``application/`` and ``infrastructure/`` inside; ``contracts/`` holds the public, versioned events
that travel between them. Nothing under one context imports another context.
"""
