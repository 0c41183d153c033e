"""Query filters added for compliance: model, entity type, purpose, retention class."""

from __future__ import annotations

import pytest

from custos.audit import AuditStore, InvalidQuery
from custos.testing.audit import event


@pytest.fixture
def seeded(store: AuditStore) -> AuditStore:
    store.append(
        event(
            model="m-a",
            details={
                "purpose": "support",
                "retention_class": "short",
                "pii": {"counts": {"PERSON": 1, "EMAIL_ADDRESS": 2}},
            },
        )
    )
    store.append(
        event(
            model="m-b",
            details={"purpose": "billing", "retention_class": "long", "pii": {"counts": {"IBAN_CODE": 1}}},
        )
    )
    store.append(event(model="m-a", details={}))
    return store


@pytest.mark.parametrize(
    ("filters", "seqs"),
    [
        ({"model": "m-a"}, [3, 1]),
        ({"entity_type": "PERSON"}, [1]),
        ({"entity_type": "EMAIL"}, []),  # whole names only
        ({"entity_type": "IBAN_CODE"}, [2]),
        ({"purpose": "billing"}, [2]),
        ({"retention_class": "short", "model": "m-a"}, [1]),
    ],
)
def test_filters(seeded: AuditStore, filters: dict[str, str], seqs: list[int]) -> None:
    records, _ = seeded.query(**filters)
    assert [r.seq for r in records] == seqs
    assert [r.seq for r in seeded.scan(**filters)] == sorted(seqs)
    assert seeded.count(**filters) == len(seqs)


def test_entity_type_filter_rejects_patterns(store: AuditStore) -> None:
    with pytest.raises(InvalidQuery) as info:
        store.query(entity_type="%")
    assert info.value.field == "entity_type"


def test_derived_columns_are_checked_by_verify(seeded: AuditStore) -> None:
    import sqlalchemy as sa

    from custos.audit.models import AuditRecordRow

    with seeded.engine.begin() as conn:
        conn.execute(sa.update(AuditRecordRow).where(AuditRecordRow.seq == 2).values(purpose="support"))
    report = seeded.verify()
    assert (report.first_bad_seq, report.reason) == (2, "column 'purpose' disagrees with payload")
