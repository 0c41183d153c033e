"""Verifiable exports: offline verification of JSONL, tampering caught and named, CSV for reading."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from custos.audit import AuditStore
from custos.audit.checkpoints import CheckpointLog, CheckpointSigner, CheckpointWriter
from custos.audit.export import CSV_COLUMNS, export_csv, export_jsonl, verify_export
from custos.testing.audit import completion, event


@pytest.fixture
def signer(tmp_path: Path) -> CheckpointSigner:
    return CheckpointSigner.create(tmp_path / "signing.pem")


@pytest.fixture
def exported(store: AuditStore, signer: CheckpointSigner, tmp_path: Path) -> list[bytes]:
    log = CheckpointLog(tmp_path / "checkpoints.jsonl")
    writer = CheckpointWriter(store.engine, signer, log, every_records=4, every_seconds=3600)
    store.add_commit_listener(writer.note_appended)
    for i in range(5):
        request = store.append(event(actor=f"svc:{i % 2}"))
        store.append(completion(request, actor=f"svc:{i % 2}"))
    return list(
        export_jsonl(
            store, checkpoints=log.read(), public_key_hex=signer.public_key_hex, filters={"actor": "svc:1"}
        )
    )


def _edit(lines: list[bytes], seq: int, **changes: object) -> list[bytes]:
    out = []
    for line in lines:
        item = json.loads(line)
        if item.get("seq") == seq and item["type"] in ("record", "link"):
            item.update(changes)
        out.append(json.dumps(item).encode())
    return out


def test_a_filtered_export_verifies_offline(exported: list[bytes], signer: CheckpointSigner) -> None:
    kinds = [json.loads(x)["type"] for x in exported]
    assert kinds[0] == "header" and kinds[-1] == "end"
    assert kinds.count("record") == 4 and kinds.count("link") == 6 and kinds.count("checkpoint") == 2
    report = verify_export(exported, expected_public_key=signer.public_key_hex)
    assert (report.ok, report.rows, report.records, report.checkpoints) == (True, 10, 4, 2), report
    # links carry no payload: records of other actors are not disclosed
    assert not any(b"svc:0" in x for x in exported if json.loads(x)["type"] == "link")


def _payload_status_edit(lines: list[bytes]) -> list[bytes]:
    item = next(json.loads(x) for x in lines if json.loads(x)["type"] == "record")
    return _edit(lines, item["seq"], payload=item["payload"].replace('"OK"', '"XX"'))


def _first_record_seq(lines: list[bytes]) -> int:
    return int(next(json.loads(x)["seq"] for x in lines if json.loads(x)["type"] == "record"))


@pytest.mark.parametrize(
    ("tamper", "bad_seq", "reason"),
    [
        pytest.param(_payload_status_edit, "first_record", "row_hash mismatch", id="edited payload"),
        pytest.param(lambda ls: ls[:3] + ls[4:], 3, "gap", id="deleted row"),
        pytest.param(lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], 1, "gap", id="reordered rows"),
        pytest.param(lambda ls: ls[:-1], 11, "no end line (truncated export)", id="truncated"),
        pytest.param(lambda ls: _edit(ls, 2, row_hash="ab" * 32), 3, "broken link", id="edited link hash"),
    ],
)
def test_tampered_exports_name_the_first_bad_row(
    exported: list[bytes], tamper: object, bad_seq: int | str, reason: str
) -> None:
    expected = _first_record_seq(exported) if bad_seq == "first_record" else bad_seq
    report = verify_export(tamper(exported))  # type: ignore[operator]
    assert (report.ok, report.first_bad_seq, report.reason) == (False, expected, reason)


def test_an_export_signed_by_another_key_is_refused(exported: list[bytes], tmp_path: Path) -> None:
    other = CheckpointSigner.create(tmp_path / "other.pem")
    report = verify_export(exported, expected_public_key=other.public_key_hex)
    assert not report.ok and "different public key" in report.reason


def test_a_forged_checkpoint_line_fails(exported: list[bytes]) -> None:
    lines = []
    for line in exported:
        item = json.loads(line)
        if item["type"] == "checkpoint":
            item["row_hash"] = "cd" * 32
        lines.append(json.dumps(item).encode())
    report = verify_export(lines)
    assert not report.ok and report.reason == "checkpoint signature invalid"


def test_csv_export_has_a_header_and_one_row_per_record(store: AuditStore) -> None:
    for i in range(3):
        store.append(event(actor=f"svc:{i}"))
    text = b"".join(export_csv(store.scan())).decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r[CSV_COLUMNS.index("actor")] for r in rows[1:]] == ["svc:0", "svc:1", "svc:2"]
