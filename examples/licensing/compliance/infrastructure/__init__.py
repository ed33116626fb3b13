"""Infrastructure of Compliance: the ACL consumers, the partner-feed gateway, the alerts feed, tables, API and wiring."""
