"""The retailer's fulfilment migration: a legacy OMS captured by CDC, the new Ordering context beside it, and Shipping built once against the contract.

Layout (the contexts never import each other; they share ``contracts`` and ``cutover`` only):

    contracts.py   the integration contract ``ordering.OrderAcceptedForFulfillment`` v1
    cutover.py     which system produces the contract per market (a table both consult)
    legacy/        the monolith's tables and writer (its own codes, amounts as text, local times) and its ACL
    ordering/      the new Ordering context: Order aggregate, outbox
    shipping/      Shipping: Shipment aggregate, "awaiting warehouse release" read model, its consumer
    platform.py    the composition root (the only module that knows every part)
    scenario.py    ``python -m examples.fulfilment demo``: the self-checking story
"""
