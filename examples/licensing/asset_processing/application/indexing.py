"""The keywords an asset is indexed under: words of its title, its format and its camera's make."""

from __future__ import annotations

import re

from examples.licensing.asset_processing.domain import MAX_KEYWORDS

__all__ = ["keywords_for"]

# Words too common to tell one asset from another; a search for "the" should not match everything.
_STOPWORDS = frozenset(
    {"a", "an", "and", "at", "by", "for", "from", "in", "into", "of", "on", "or", "the", "to", "with"}
)
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def keywords_for(title: str, format: str, camera_make: str | None = None) -> tuple[str, ...]:
    """Lower-case keywords of an asset, each once, in order: title words (no stopwords), format, camera make."""
    words = [word.lower() for word in _WORD.findall(title)]
    candidates = [word for word in words if word not in _STOPWORDS]
    candidates.append(format.lower())
    if camera_make:
        candidates.append(camera_make.lower())
    # dict.fromkeys keeps the first occurrence of each word and its order.
    return tuple(dict.fromkeys(word for word in candidates if word.strip()))[:MAX_KEYWORDS]
