"""Requests from accounts of Tier 2 must name their end user (`user`), or get a clear 400.

OpenAI-style JSON bodies carry it as `user`, Anthropic's /v1/messages as
`metadata.user_id`. Bodies that are not JSON (audio uploads) are let through.
Option `tier` ([plugin.require_user] / XAI_REQUIRE_USER_TIER) picks the Tier.
"""

from xaiproxy.api import ApiError, Gateway, Option, RequestContext


def setup(gw: Gateway) -> None:
    opts = gw.options(Option("tier", int, 2, "accounts of this Tier must send `user`"))

    @gw.hooks.before_upstream.append
    async def require_user(ctx: RequestContext) -> None:
        body = ctx.payload
        if ctx.account.tier != opts.tier or not isinstance(body, dict):
            return
        user = body.get("user") or (body.get("metadata") or {}).get("user_id")
        if not isinstance(user, str) or not user.strip():
            raise ApiError(
                400,
                "missing_user",
                f"accounts of Tier {opts.tier} must name the end user of each request:"
                ' add "user": "<your user id>" to the body',
            )
