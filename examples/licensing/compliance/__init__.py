"""Compliance: usage past a license's allowance opens an investigation that is reviewed and closed."""
