"""Specification of the reference platform (examples/licensing): domains, contracts and context boundaries."""
