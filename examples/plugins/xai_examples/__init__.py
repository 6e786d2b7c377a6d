"""Worked xaiproxy plugins: `spend` (GET /x-spend) and `require-user` (a before_upstream rule)."""
