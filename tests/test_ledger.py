"""The ledger on its own: spend order, expiry, funding at base worth, refunds, debt, reservations."""

import time

import pytest

from tests.plugins.test_users import new_user
from xaiproxy import ledger
from xaiproxy.errors import ApiError
from xaiproxy.state import Account, State
from xaiproxy.store.ops import GrantDelta

N = ledger.NANO


@pytest.fixture
def tree():
    """(a Ledger on a fresh State, root, parent (Rates 1), child (Rates 1.5))."""
    state = State()

    def add(i, parent_id, rates=1.0):
        acc = Account(i, f"acc{i}", f"a{i}@x.io", f"h{i}", "p", "", 0, parent_id, rates=rates)
        state.add_account(acc)
        return acc

    root, parent = add(1, None), add(2, 1)
    child = add(3, 2, rates=1.5)
    state.seed_id("grants", 0)
    return ledger.Ledger(state), root, parent, child


def test_units():
    assert ledger.to_n(150, 1.5) == 100 * N
    assert ledger.from_n(100 * N, 1.5) == 150
    assert ledger.to_n(0.2, 1.0) == N // 5


def test_spend_draws_soonest_expiring_first(tree):
    money, root, parent, _ = tree
    now = time.time()
    late, _ = money.new_grant(parent, 10 * N, 300, "late", now)
    soon, _ = money.new_grant(parent, 10 * N, 10, "soon", now)
    mid, _ = money.new_grant(parent, 10 * N, 100, "mid", now)
    assert [g.reference for g in parent.grants] == ["soon", "mid", "late"]
    ops = money.spend(parent, 15 * N, now)
    assert (soon.remaining_n, mid.remaining_n, late.remaining_n) == (0, 5 * N, 10 * N)
    assert [(op.take_n, op.grant_id) for op in ops] == [(10 * N, soon.id), (5 * N, mid.id)]
    assert all(type(op) is GrantDelta for op in ops)
    assert ledger.balance(parent, now) == 15


def test_expired_grants_neither_count_nor_pay(tree):
    money, _, parent, _ = tree
    now = time.time()
    gone, _ = money.new_grant(parent, 10 * N, 0.00001, "gone", now - 10)
    kept, _ = money.new_grant(parent, 5 * N, 30, "kept", now)
    assert ledger.balance(parent, now) == 5
    money.spend(parent, 2 * N, now)
    assert (gone.remaining_n, kept.remaining_n) == (10 * N, 3 * N)


def test_spend_beyond_balance_becomes_debt(tree):
    money, root, parent, _ = tree
    g, _ = money.new_grant(parent, 1 * N, 30, "x")
    money.spend(parent, 3 * N)
    assert g.remaining_n == -2 * N and ledger.balance(parent) == -2
    assert money.spend(root, 10 * N) == []  # root is never debited


def test_fund_at_base_worth(tree):
    money, root, parent, child = tree
    ops = money.fund(root, parent, 100, None, root, "initial")
    assert ledger.balance(parent) == 100 and len(ops) == 2  # grant + journal, root mints
    money.fund(parent, child, 150, 30, parent, "initial")
    assert (ledger.balance(parent), ledger.balance(child)) == (0, 150)
    g = child.grants[0]
    assert abs(g.expires_at - g.granted_at - 30 * 86400) < 1


def test_fund_refused_changes_nothing(tree):
    money, root, parent, child = tree
    money.fund(root, parent, 10, None, root, "initial")
    with pytest.raises(ApiError) as err:
        money.fund(parent, child, 16, None, parent, "recharge")  # worth 10.67
    assert err.value.status == 403 and err.value.code == "insufficient_balance"
    assert ledger.balance(parent) == 10 and child.grants == []
    parent.reserved_n = 5 * N  # requests in flight hold half of it
    with pytest.raises(ApiError):
        money.fund(parent, child, 9, None, parent, "recharge")
    with pytest.raises(ApiError) as err:
        money.fund(parent, child, 0, None, parent, "recharge")
    assert err.value.status == 400


def test_refund_fee_and_limits(tree):
    money, root, parent, child = tree
    money.fund(root, parent, 100, None, root, "initial")
    money.fund(parent, child, 150, None, parent, "initial")
    with pytest.raises(ApiError) as err:
        money.refund(child, parent, 150.01, parent, "refund")
    assert err.value.status == 400 and ledger.balance(child) == 150
    ops, back = money.refund(child, parent, 60, parent, "refund")
    assert back == 39.8 and ledger.balance(parent) == 39.8 and ledger.balance(child) == 90
    refund = [g for g in parent.grants if g.reference == "refund"][0]
    assert abs(refund.expires_at - refund.granted_at - 180 * 86400) < 1
    ops, back = money.leave(child, parent)  # delete: everything
    assert back == pytest.approx(59.8) and ledger.balance(child) == 0
    assert child.deleted and money.settle_deleted(child) == []


def test_tiny_refund_is_all_fee(tree):
    money, root, parent, _ = tree
    money.fund(root, parent, 1, None, root, "initial")
    ops, back = money.refund(parent, root, 0.1, parent, "refund")
    assert back == 0 and ledger.balance(parent) == 0.9
    journal = ops[-1]
    assert (journal.amount_n, journal.fee_n) == (0, N // 10)  # amount 0, fee = all of it


def test_reserve_and_release(tree):
    money, root, parent, _ = tree
    money.fund(root, parent, 10, None, root, "initial")
    assert ledger.reserve(parent, 8 * N, 1 * N)
    assert not ledger.reserve(parent, 2 * N, 1 * N)  # would leave 0 < floor 1
    ledger.release(parent, 8 * N)
    assert parent.reserved_n == 0 and ledger.reserve(root, 10**17, N)


def test_check_amount():
    assert ledger.check_amount(5) == 5.0
    for bad in (True, "5", float("nan"), float("inf"), 2e9, None):
        with pytest.raises(ApiError):
            ledger.check_amount(bad)


async def test_audit_balances(api):
    p, pkey = await new_user(api, "audited", 100)
    await new_user(api, "audited-kid", 30, key=pkey)
    assert (await api.put(f"/x-users/{p}", {"CreditGranted": -10})).status == 200
    report = await ledger.audit(api.gw.store)
    # minted 100, 9.8 came back to root, 0.2 was the fee; 60 + 30 are held
    assert report["ok"] and report["minted_n"] == 90 * N + N // 5
    assert report["fees_n"] == N // 5 and report["held_n"] == 90 * N


async def test_two_gateways_in_one_process_keep_their_own_grant_ids(aiohttp_server, tmp_path):
    """Grant ids come from each gateway's own state: no shared allocator across apps."""
    from tests.helpers import start_gateway

    first_db = tmp_path / "first.db"
    first = await start_gateway(aiohttp_server, first_db)
    for n in range(3):
        await first.post(
            "/x-users", {"Name": f"early-{n}", "Email": f"e{n}@x.io", "CreditGranted": 5}
        )
    await first.close()
    again = await start_gateway(aiohttp_server, first_db)  # its grant ids continue at 4
    other = await start_gateway(aiohttp_server, tmp_path / "other.db")  # a fresh one, made last
    try:
        r = await again.post(
            "/x-users", {"Name": "late-one", "Email": "l@x.io", "CreditGranted": 5}
        )
        assert r.status == 200, r.body
        assert (
            await other.post(
                "/x-users", {"Name": "elsewhere", "Email": "o@x.io", "CreditGranted": 5}
            )
        ).status == 200
        await again.gw.store.flush()
        rows = await again.gw.store.fetchall("SELECT id, account_id FROM grants ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, 2), (2, 3), (3, 4), (4, 5)]
        memory = {g.id for a in again.gw.state.accounts.values() for g in a.grants}
        assert memory == {1, 2, 3, 4}
    finally:
        await again.close()
        await other.close()


def test_fund_and_refund_take_explicit_rates(tree):
    """A recharge that comes with a Rates change is valued at the new Rates, and the
    account's own Rates stay as they are until the change is applied."""
    money, root, parent, child = tree
    money.fund(root, parent, 100, None, root, "initial")
    money.fund(parent, child, 30, None, parent, "recharge", rates=3.0)
    assert child.rates == 1.5 and child.grants[0].amount_n == 10 * N
    with pytest.raises(ApiError):
        money.refund(child, parent, 31, parent, "refund", rates=3.0)  # 31 at Rates 3 > held
    ops, back = money.refund(child, parent, 15, parent, "refund", rates=3.0)
    assert child.rates == 1.5 and ledger.balance_n(child) == 5 * N and back == 4.8
