"""``custos anonymize``: the privacy stage from the command line.

It runs locally on --data-dir / --config like the other operator commands: the same analyzer settings, the
same conversation vault, and an audit record per input with the operating-system user as actor. No model is
loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from custos.cli.common import ConfigOpt, DataDirOpt, err, os_actor, settings_or_exit
from custos.server.settings import Settings

ROLES = ("system", "user", "assistant")


class InputError(ValueError):
    """A line of the input file is not a valid request; the message names the line and field."""


@dataclass(frozen=True)
class AnonymizeInput:
    """One request: a conversation id and its messages."""

    conversation_id: str
    messages: list[dict[str, str]]


def parse_jsonl(lines: Iterable[str]) -> Iterator[AnonymizeInput]:
    """Read ``{"conversation_id"?, "messages": [{"role", "content"}]}`` or ``{"text"}`` per line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise InputError(f"line {number}: not JSON") from None
        if not isinstance(item, dict):
            raise InputError(f"line {number}: must be a JSON object")
        conversation = item.get("conversation_id", "cli")
        if not isinstance(conversation, str) or not conversation:
            raise InputError(f"line {number}: conversation_id must be a non-empty string")
        if "text" in item:
            if not isinstance(item["text"], str):
                raise InputError(f"line {number}: text must be a string")
            messages = [{"role": "user", "content": item["text"]}]
        else:
            raw = item.get("messages")
            if not isinstance(raw, list) or not raw:
                raise InputError(f"line {number}: needs 'text' or a non-empty 'messages' list")
            messages = []
            for index, message in enumerate(raw):
                if (
                    not isinstance(message, dict)
                    or message.get("role") not in ROLES
                    or not isinstance(message.get("content"), str)
                ):
                    raise InputError(
                        f"line {number}: messages[{index}] needs role (system|user|assistant) and content"
                    )
                messages.append({"role": message["role"], "content": message["content"]})
        yield AnonymizeInput(conversation, messages)


class LocalAnonymizer:
    """The privacy stage with the server's settings, vault and audit trail, without a server."""

    def __init__(self, settings: Settings) -> None:
        from custos.audit.db import make_engine, migrate
        from custos.audit.store import AuditStore
        from custos.flows.privacy_step import PrivacyStage
        from custos.privacy.analyzer import build_analyzer
        from custos.privacy.subject_keys import SubjectKeyStore
        from custos.privacy.vault import ConversationVault
        from custos.server.app import build_pseudonymizer, ensure_private_dir
        from custos.server.keys import open_master_keys

        ensure_private_dir(settings.data_dir)
        ensure_private_dir(settings.resolved_key_file.parent)
        self._keys = open_master_keys(settings)
        db = make_engine(settings.resolved_database_url)
        migrate(db)
        self._audit = AuditStore(db)
        analyzer = build_analyzer(
            spacy_model=settings.spacy_model,
            languages=settings.pii_languages,
            entities=settings.pii_entities,
            phone_regions=settings.pii_phone_regions,
            deny_lists=settings.pii_deny_lists,
            crm_references=settings.pii_crm_references,
        )
        self._stage = PrivacyStage(
            build_pseudonymizer(settings, analyzer),
            # Sealed for the conversation's anonymous subject, never under the master key alone, so
            # ``custos subjects erase --principal <os user> --conversation <id>`` erases it.
            vault=ConversationVault(
                db,
                self._keys,
                ttl_seconds=settings.vault_ttl_seconds,
                subject_keys=SubjectKeyStore(db, self._keys),
            ),
            block_entities=settings.pii_block_entities,
            language_policy=settings.pii_language_policy,
        )
        self._actor = os_actor()
        self._retention = settings.retention_class

    def anonymize(self, item: AnonymizeInput) -> dict[str, Any]:
        """Anonymize one request and audit it; returns messages and findings (never values)."""
        from custos.audit.events import AuditEvent
        from custos.privacy.keys import blind_index
        from custos.privacy.subject_keys import anonymous_subject_ref

        start = datetime.now(UTC)
        ref = blind_index(self._keys.index_key(), "conversation", f"{self._actor}\x00{item.conversation_id}")
        subject_ref = anonymous_subject_ref(self._keys, self._actor, item.conversation_id)
        decision = self._stage.run([m["content"] for m in item.messages], ref, subject_ref=subject_ref)
        anon = decision.anon
        record = self._audit.append(
            AuditEvent(
                event_type="anonymize",
                phase="event",
                request_id=None,
                start_time=start,
                end_time=datetime.now(UTC),
                actor=self._actor,
                rpc="cli.anonymize",
                status="OK",
                model=None,
                conversation_ref=ref,
                subject_ref=subject_ref,
                transcript_id=None,
                details={
                    "messages": len(item.messages),
                    "pii": {"counts": anon.counts(), "findings": [f.to_audit() for f in anon.findings]},
                    **decision.audit,
                    "retention_class": self._retention,
                    "actor": {"principal": self._actor, "peer": "local"},
                },
            )
        )
        return {
            "request_id": record.id,
            "conversation_id": item.conversation_id,
            "messages": [
                {"role": m["role"], "content": text}
                for m, text in zip(item.messages, anon.texts, strict=True)
            ],
            "findings": [
                {
                    "message_index": f.message_index,
                    "entity_type": f.entity_type,
                    "start": f.start,
                    "end": f.end,
                    "score": round(f.score, 4),
                    "recognizer": f.recognizer,
                    "placeholder": f.placeholder,
                }
                for f in anon.findings
            ],
        }


def anonymize(
    text: Annotated[str | None, typer.Argument(help="Text to anonymize (or use --file).")] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help='JSONL: {"text"} or {"conversation_id", "messages"} per line.'),
    ] = None,
    conversation_id: Annotated[str, typer.Option(help="Conversation of TEXT (scopes placeholders).")] = "cli",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print, as JSONL, exactly the text the model would be given and the findings; audited, no model."""
    if (text is None) == (file is None):
        err.print("[red]error:[/red] give TEXT or --file, not both")
        raise typer.Exit(2)
    settings = settings_or_exit(config, data_dir=data_dir)
    try:
        if file is not None:
            items = list(parse_jsonl(file.read_text(encoding="utf-8").splitlines()))
        else:
            assert text is not None
            items = [AnonymizeInput(conversation_id, [{"role": "user", "content": text}])]
    except (InputError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    anonymizer = LocalAnonymizer(settings)
    for item in items:
        print(json.dumps(anonymizer.anonymize(item), ensure_ascii=False))
