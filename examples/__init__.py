"""Example systems built on tidings: the quickstart story now, the reference platform next."""
