"""``custos subjects``: data-subject rights on the local data directory, erasure and access; audited.

The operating-system user is the audit actor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from custos.cli.common import (
    ConfigOpt,
    DataDirOpt,
    err,
    exit_on_privacy_errors,
    open_database,
    os_actor,
    out,
    settings_or_exit,
)

subjects_app = typer.Typer(help="Data-subject rights: erasure and access.", no_args_is_help=True)


@subjects_app.command("erase")
def subjects_erase(
    subject_id: Annotated[
        str | None, typer.Argument(help="The customer's subject_id as callers send it.")
    ] = None,
    principal: Annotated[
        str | None, typer.Option(help="With --conversation: the anonymous subject of that conversation.")
    ] = None,
    conversation: Annotated[str | None, typer.Option(help="Conversation id (anonymous subject).")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Erase a subject: its key, conversation maps and feedback comments (transcripts unreadable); audited."""
    from custos.audit.store import AuditStore
    from custos.privacy.erasure import ErasureLedger, SubjectService
    from custos.server.keys import open_master_keys

    if (subject_id is None) == (principal is None or conversation is None):
        err.print("[red]error:[/red] give SUBJECT_ID, or --principal and --conversation")
        raise typer.Exit(2)
    settings = settings_or_exit(config, data_dir=data_dir)
    with exit_on_privacy_errors():
        keys = open_master_keys(settings, create=False)
        ref = _subject_ref(keys, subject_id, principal, conversation)
        engine = open_database(settings)
        service = SubjectService(
            engine,
            keys,
            AuditStore(engine),
            ErasureLedger.beside_checkpoints(settings.data_dir),
            vault_ttl_seconds=settings.vault_ttl_seconds,
        )
        result = service.erase(ref, actor=os_actor(), rpc="cli:subjects erase")
    print(
        json.dumps(
            {
                "subject_ref": result.subject_ref,
                "subject_key_destroyed": result.subject_key_destroyed,
                "vault_rows_deleted": result.vault_rows_deleted,
                "transcripts_unreadable": result.transcripts_unreadable,
                "feedback_comments_erased": result.feedback_comments_erased,
                "audit_record": result.record_id,
            },
            sort_keys=True,
        )
    )


def _subject_ref(keys: Any, subject_id: str | None, principal: str | None, conversation: str | None) -> str:
    from custos.privacy.subject_keys import anonymous_subject_ref, subject_ref_of

    if subject_id is not None:
        return subject_ref_of(keys, subject_id)
    assert principal is not None and conversation is not None
    return anonymous_subject_ref(keys, principal, conversation)


@subjects_app.command("export")
def subjects_export(
    subject_id: Annotated[str, typer.Argument(help="The customer's subject_id as callers send it.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the JSON document (mode 0600).")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Right of access: decrypted transcripts and audit records of one subject, as one JSON file; audited."""
    from custos.audit.store import AuditStore
    from custos.privacy.erasure import export_subject
    from custos.privacy.subject_keys import subject_ref_of
    from custos.server.keys import open_master_keys

    settings = settings_or_exit(config, data_dir=data_dir)
    with exit_on_privacy_errors():
        keys = open_master_keys(settings, create=False)
        engine = open_database(settings)
        document = export_subject(
            engine,
            keys,
            AuditStore(engine),
            subject_ref_of(keys, subject_id),
            actor=os_actor(),
            rpc="cli:subjects export",
        )
        fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, ensure_ascii=False, indent=2, sort_keys=True)
    out.print(
        f"{len(document['transcripts'])} transcripts and {len(document['audit_records'])} audit records "
        f"written to {out_file} (audit record {document['export_record']})"
    )
