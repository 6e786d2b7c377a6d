"""Paging shared by list endpoints: ?page=&size= in, X-Total-Count & co. out."""

from __future__ import annotations

from xaiproxy.api import ApiError

PAGING_QUERY = {
    "page": {"type": "string", "pattern": "^[0-9]{1,9}$"},
    "size": {"type": "string", "pattern": "^[0-9]{1,9}$"},
}


def page(items: list, query: dict, default_size: int = 100, max_size: int = 1000):
    """The slice of items the query asks for, and the paging headers."""
    number = int(query.get("page") or 1)
    size = int(query.get("size") or default_size)
    if number < 1 or not 1 <= size <= max_size:
        raise ApiError(400, "invalid_paging", f"page must be >= 1 and size 1-{max_size}")
    total = len(items)
    pages = max((total + size - 1) // size, 1)
    headers = {
        "X-Total-Count": str(total),
        "X-Page": str(number),
        "X-Per-Page": str(size),
        "X-Total-Pages": str(pages),
    }
    return items[(number - 1) * size : number * size], headers
