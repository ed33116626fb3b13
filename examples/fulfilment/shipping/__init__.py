"""Shipping: built once against ``OrderAcceptedForFulfillment``; one shipment per order, whichever system published it."""
