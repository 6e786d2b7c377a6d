"""GET /x-spend?days=N: the caller's own spend per UTC day over the last N days (default 7).

Every day of the span is listed, days without usage as zeros; costs are in the
caller's money units. Option `max_days` ([plugin.spend] / XAI_SPEND_MAX_DAYS) caps N.
"""

from datetime import timedelta

from xaiproxy.api import Call, Gateway, Option, usage


def setup(gw: Gateway) -> None:
    opts = gw.options(Option("max_days", int, 90, "the longest span GET /x-spend answers"))
    query = {
        "type": "object",
        "properties": {"days": {"type": "integer", "minimum": 1, "maximum": opts.max_days}},
        "additionalProperties": False,
    }

    async def spend(call: Call):
        days = call.query.get("days", 7)  # an int: the query schema coerces it
        start, end = usage.last_days(days)
        rows = await call.gw.usage.read(call.caller, start=start, end=end, subtree_too=False)
        found = {row.day: row for row in rows}
        out = []
        for i in range(days):
            day = start + timedelta(days=i)
            row = found.get(day)
            out.append(
                {
                    "date": day.isoformat(),
                    "requests": row.requests if row else 0,
                    "tokens": row.total_tokens if row else 0,
                    "cost": row.cost if row else 0.0,
                }
            )
        total = round(sum(d["cost"] for d in out), 9)
        return call.json({"object": "spend", "days": out, "total_cost": total})

    gw.route(
        "GET",
        "/x-spend",
        spend,
        summary="Your spend per day, last N days",
        query=query,
        tag="examples",
    )
