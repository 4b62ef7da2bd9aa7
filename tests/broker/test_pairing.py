"""Nameplates: unique, single-use, expiring; time is a plain float."""

from __future__ import annotations

from broker.pairing import Nameplate, NameplateBook
from broker.wire.limits import CODE_LIFETIME_SECONDS, MAX_NAMEPLATE_DIGITS, NAMEPLATE_SPARSITY

T0 = 1_000.0


def test_allocate_gives_a_four_digit_plate() -> None:
    book = NameplateBook()
    plate = book.allocate("agent-1", T0)
    assert plate.owner == "agent-1"
    assert len(plate.value) == 4 and plate.value.isdigit() and plate.value[0] != "0"
    assert plate.expires_at == T0 + CODE_LIFETIME_SECONDS
    assert book.current("agent-1") == plate
    assert len(book) == 1


def test_values_are_unique() -> None:
    book = NameplateBook()
    plates = [book.allocate(f"agent-{i}", T0) for i in range(200)]
    assert len({p.value for p in plates}) == 200
    assert len(book) == 200


def test_claim_once() -> None:
    book = NameplateBook()
    plate = book.allocate("agent-1", T0)
    assert book.claim(plate.value, T0 + 1) == "agent-1"
    assert book.claim(plate.value, T0 + 2) is None
    assert book.current("agent-1") is None
    assert len(book) == 0


def test_claim_unknown() -> None:
    book = NameplateBook()
    plate = book.allocate("agent-1", T0)
    assert book.claim("0" + plate.value, T0) is None
    assert book.claim("", T0) is None
    # A miss does not consume the real plate.
    assert book.claim(plate.value, T0) == "agent-1"


def test_claim_after_lifetime() -> None:
    book = NameplateBook(lifetime=60)
    plate = book.allocate("agent-1", T0)
    assert book.claim(plate.value, T0 + 60) is None
    assert len(book) == 0  # gone, not kept for a second try


def test_claim_just_before_expiry() -> None:
    book = NameplateBook(lifetime=60)
    plate = book.allocate("agent-1", T0)
    assert book.claim(plate.value, T0 + 59.999) == "agent-1"


def test_expire_returns_owners() -> None:
    book = NameplateBook(lifetime=60)
    old = book.allocate("old", T0)
    young = book.allocate("young", T0 + 30)
    assert book.expire(T0 + 59) == []
    assert book.expire(T0 + 60) == ["old"]
    assert book.current("old") is None
    assert book.claim(old.value, T0 + 61) is None
    assert book.claim(young.value, T0 + 61) == "young"
    assert book.expire(T0 + 10_000) == []


def test_reallocate_replaces_the_old_plate() -> None:
    book = NameplateBook()
    first = book.allocate("agent-1", T0)
    second = book.allocate("agent-1", T0 + 5)
    assert len(book) == 1
    assert book.current("agent-1") == second
    assert second.expires_at == T0 + 5 + CODE_LIFETIME_SECONDS
    if first.value != second.value:
        assert book.claim(first.value, T0 + 6) is None
    assert book.claim(second.value, T0 + 6) == "agent-1"


def test_old_plate_never_routes_after_reallocation() -> None:
    book = NameplateBook()
    for _ in range(50):
        first = book.allocate("agent-1", T0)
        second = book.allocate("agent-1", T0)
        if first.value != second.value:
            assert book.claim(first.value, T0) is None
            return
    raise AssertionError("fifty re-draws all gave the same value")


def test_release() -> None:
    book = NameplateBook()
    plate = book.allocate("agent-1", T0)
    book.release("agent-1")
    book.release("agent-1")  # idempotent
    book.release("nobody")
    assert book.claim(plate.value, T0) is None


def test_allocate_drops_expired_plates() -> None:
    book = NameplateBook(lifetime=60)
    book.allocate("a", T0)
    book.allocate("b", T0 + 100)
    assert len(book) == 1
    assert book.current("a") is None


def test_digits_grow_when_crowded() -> None:
    book = NameplateBook()
    plates = [book.allocate(f"agent-{i}", T0) for i in range(1000)]
    values = [p.value for p in plates]
    lengths = [len(v) for v in values]
    assert len(set(values)) == 1000
    assert lengths[:9] == [4] * 9 and lengths[9:90] == [5] * 81
    assert lengths[90:900] == [6] * 810 and lengths[900:] == [7] * 100
    assert lengths == sorted(lengths)  # grows, never shrinks while crowded
    assert all(v[0] != "0" for v in values)
    for p in plates:
        assert book.current(p.owner) == p


def test_digits_shrink_again_when_quiet() -> None:
    book = NameplateBook(lifetime=60)
    for i in range(300):
        book.allocate(f"agent-{i}", T0)
    assert len(book.allocate("late", T0).value) == 6
    assert len(book.allocate("later", T0 + 61).value) == 4


def test_a_made_up_nameplate_almost_never_finds_a_waiting_agent() -> None:
    """The odds stated in `NAMEPLATE_SPARSITY`: for any number of waiting
    agents up to what 8 digits hold sparsely, a guess of any length hits at
    most one in 1,000 times (a sweep's hit spends a customer's code)."""
    for waiting in (1, 9, 10, 90, 91, 5_000):
        book = NameplateBook()
        for i in range(waiting):
            book.allocate(f"agent-{i}", T0)
        for digits in range(1, MAX_NAMEPLATE_DIGITS + 1):
            taken = sum(1 for p in book._by_value if len(p) == digits)
            space = 9 * 10 ** (digits - 1)
            assert taken * NAMEPLATE_SPARSITY <= space, (waiting, digits)


def test_nameplates_stay_within_the_longest_the_protocol_carries() -> None:
    book = NameplateBook()
    book._by_value.update({str(i): Nameplate(str(i), f"agent-{i}", T0 + 60)
                           for i in range(100_000)})
    assert len(book.allocate("crowded", T0).value) == MAX_NAMEPLATE_DIGITS
