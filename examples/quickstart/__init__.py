"""A small licensing model that shows the toolkit's write path end to end."""
