"""Infrastructure of Licensing: the ACL consumer, the usage-by-day projection, the HTTP routes and the wiring."""
