"""Asset Processing: uploaded media assets get their metadata extracted and are indexed for search."""
