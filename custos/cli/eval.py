"""``custos eval``: Classify on a labelled set beside two baselines, its latency, and the fairness check.

The model and the anonymizer are built from the same settings as ``custos serve`` (local files only), and
every message is anonymized before the model scores it, as in the server.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from custos.cli.common import ConfigOpt, DataDirOpt, err, out, settings_or_exit

if TYPE_CHECKING:
    from collections.abc import Callable

    from custos.engine.base import Engine
    from custos.engine.scoring import ContinuationScores
    from custos.server.settings import Settings
    from custos.tasks.eval import Example
    from custos.tasks.labels import LabelSet

eval_app = typer.Typer(
    help="Measure Classify: accuracy, macro-F1, calibration and latency against baselines; fairness.",
    invoke_without_command=True,
)
LabelSetOpt = Annotated[
    str, typer.Option("--label-set", help="Configured label set the data is labelled with.")
]
# 200-character customer messages for the latency measurement (no personal data: the prompts stay fixed).
# They differ from their first word on, so no call finds another's message in the kept prompt heads.
LATENCY_MESSAGES = (
    "Hello, I ordered a winter jacket and a pair of boots two weeks ago and nothing has arrived so far. "
    "The tracking page has not changed for six days. Could you please check what is happening with it now?",
    "Good morning. Last Thursday, I bought a coffee machine and two mugs, but the box arrived with one mug "
    "broken and the machine leaking water. Can I get a replacement sent out, or should I return it all?",
    "Hi there, my account shows a payment of 89 euros that I do not recognise, and since yesterday I also "
    "cannot log in because the password reset link never arrives. Please help me sort out both problems.",
    "Dear team, please stop sending me the weekly newsletter and the offers by text message. I have already "
    "asked twice. Also, can you tell me if you still ship to Norway and what the delivery there costs?",
)


def _console() -> Console:
    return out if out.is_terminal else Console(width=160)


def _load(settings: Settings) -> tuple[Engine, Any]:
    from custos.server.app import build_components, build_pseudonymizer

    err.print("[dim]loading the model and the anonymizer...[/dim]")
    components = build_components(settings)
    return components.engine, build_pseudonymizer(settings, components.analyzer)


def _scorer(settings: Settings, labels: LabelSet) -> Callable[[str], list[float]]:
    """Classify's label scores for a raw message, anonymized first, with the configured model."""
    engine, pseudonymizer = _load(settings)

    def score(text: str) -> list[float]:
        anonymized = pseudonymizer.pseudonymize([text]).texts[0]
        return list(engine.score_continuations(labels.prefix(anonymized), labels.continuations()).logprobs)

    return score


def _examples(data: Path | None) -> list[Example]:
    """The labelled examples of ``data`` (the bundled set when None); a clear exit on a bad file."""
    from custos.tasks.eval import EvalDataError, bundled_dataset, load_examples

    try:
        return load_examples(data or bundled_dataset())
    except (OSError, EvalDataError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _label_set(settings: Settings, name: str) -> LabelSet:
    from custos.tasks.labels import LabelSetRegistry
    from custos.tasks.templates import TemplateError

    try:
        return LabelSetRegistry.load(settings.label_sets_dir).get(name)
    except TemplateError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@eval_app.callback()
def eval_classify(
    ctx: typer.Context,
    data: Annotated[
        Path | None, typer.Option("--data", help="Labelled JSONL (text, label); default: the bundled set.")
    ] = None,
    label_set: LabelSetOpt = "intents",
    plots: Annotated[
        Path | None, typer.Option("--plots", help="Write confusion-matrix and reliability PNGs here.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=10, help="Use only the first N examples.")] = None,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Accuracy, macro-F1, confusion matrix and ECE of Classify beside two baselines."""
    if ctx.invoked_subcommand is not None:
        return
    from custos.tasks.eval import EvalDataError, evaluate, write_plots

    if output not in ("table", "json"):
        err.print("[red]error:[/red] --format must be table or json")
        raise typer.Exit(2)
    settings = settings_or_exit(config, data_dir=data_dir)
    labels = _label_set(settings, label_set)
    examples = _examples(data)
    if limit is not None:
        examples = examples[:limit]
    score = _scorer(settings, labels)

    def progress(done: int, total: int) -> None:
        if done % 50 == 0 or done == total:
            err.print(f"[dim]scored {done}/{total}[/dim]")

    try:
        report = evaluate(examples, labels, score, progress=progress)
    except EvalDataError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    written = []
    if plots is not None:
        try:
            written = write_plots(report, plots)
        except ImportError:
            err.print("[red]error:[/red] --plots needs matplotlib: pip install 'custos[plots]'")
            raise typer.Exit(2) from None
    if output == "json":
        print(
            json.dumps(
                {
                    "examples": len(examples),
                    "calibration_examples": report.calibration_examples,
                    "evaluation_examples": len(report.gold),
                    "systems": {
                        r.name: {"accuracy": r.accuracy, "macro_f1": r.macro_f1, "ece": r.ece}
                        for r in report.results
                    },
                    "labels": report.labels,
                    "confusion_matrix": report.confusion("classify (calibrated)"),
                    "latency_p50_ms": report.latency_p50_ms,
                    "plots": [str(p) for p in written],
                },
                indent=2,
            )
        )
        return
    table = Table(
        "system",
        "accuracy",
        "macro-F1",
        "ECE",
        title=f"{len(report.gold)} evaluation messages ({report.calibration_examples} held out for "
        f"calibration), label set {labels.id} v{labels.version}",
    )
    for r in report.results:
        table.add_row(r.name, f"{r.accuracy:.3f}", f"{r.macro_f1:.3f}", f"{r.ece:.3f}")
    console = _console()
    console.print(table)
    confusion = Table(
        "gold \\ predicted", *[str(i) for i in range(len(report.labels))], title="Confusion matrix"
    )
    for i, row in enumerate(report.confusion("classify (calibrated)")):
        confusion.add_row(f"{i} {report.labels[i]}", *[str(v) if v else "." for v in row])
    console.print(confusion)
    best = max(r.accuracy for r in report.results if not r.name.startswith("classify"))
    classify = max(r.accuracy for r in report.results if r.name.startswith("classify"))
    console.print(
        f"Classify beats both baselines: {'yes' if classify > best else 'no'} "
        f"(best Classify accuracy {classify:.3f} vs best baseline {best:.3f}); "
        f"p50 per message (anonymize + score) {report.latency_p50_ms:.0f} ms"
    )
    for path in written:
        err.print(f"wrote {path}")


@eval_app.command("calibrate")
def eval_calibrate(
    data: Annotated[
        Path | None, typer.Option("--data", help="Labelled JSONL (text, label); default: the bundled set.")
    ] = None,
    label_set: LabelSetOpt = "intents",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Fit temperature and per-label bias on the calibration split; print the label set's [calibration]."""
    from custos.tasks.eval import EvalDataError, calibrate, calibration_toml

    settings = settings_or_exit(config, data_dir=data_dir)
    labels = _label_set(settings, label_set)
    examples = _examples(data)
    score = _scorer(settings, labels)

    try:
        fitted, count = calibrate(examples, labels, score)
    except EvalDataError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    err.print(f"fitted on {count} messages (every fifth: the split custos eval holds out for calibration)")
    print(calibration_toml(fitted), end="")


@eval_app.command("latency")
def eval_latency(
    runs: Annotated[int, typer.Option(min=5, help="Timed Classify scorings.")] = 50,
    labels: Annotated[int, typer.Option(min=2, max=64, help="Labels scored per message.")] = 10,
    label_set: LabelSetOpt = "intents",
    prompt: Annotated[
        str,
        typer.Option(
            "--prompt",
            help="zero-shot: the ad hoc prompt with the label names as texts (a request with ad hoc "
            "labels); label-set: the label set's own prompt and texts.",
        ),
    ] = "zero-shot",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Classify scoring p50 (one shared prefix, all labels batched) beside a baseline: one pass per label.

    Every run scores another of four 200-character messages, so only a prompt's constant head can come
    from the kept KV cache, as between two real requests. The baseline keeps nothing. The two alternate
    call by call.
    """
    from custos.tasks.labels import Label, LabelSet

    if prompt not in ("zero-shot", "label-set"):
        err.print("[red]error:[/red] --prompt must be zero-shot or label-set")
        raise typer.Exit(2)
    settings = settings_or_exit(config, data_dir=data_dir)
    configured = _label_set(settings, label_set)
    chosen = configured.labels[:labels]
    chosen = chosen + tuple(Label(f"extra_{i}", f"topic number {i}") for i in range(labels - len(chosen)))
    if prompt == "zero-shot":
        subset = LabelSet.ad_hoc([label.name for label in chosen])
    else:
        subset = LabelSet(configured.id, configured.version, configured.prompt, chosen)
    engine, _ = _load(settings)
    prefixes = [subset.prefix(m) for m in LATENCY_MESSAGES]
    endings = subset.continuations()
    uncached = _uncached_scorer(engine)
    for prefix in prefixes:  # warm-up
        engine.score_continuations(prefix, endings)
    uncached(prefixes[0], endings[:2])

    shared: list[ContinuationScores] = []
    batched: list[float] = []
    separate: list[float] = []
    # The two cases alternate call by call, so that load from other work falls on both alike.
    for run in range(runs):
        prefix = prefixes[run % len(prefixes)]
        started = time.perf_counter()
        shared.append(engine.score_continuations(prefix, endings))
        batched.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        for ending in endings:
            uncached(prefix, [ending])
        separate.append((time.perf_counter() - started) * 1000)
    p50, base = statistics.median(batched), statistics.median(separate)
    tokens = max(s.prefix_tokens for s in shared)
    reused = statistics.median(s.reused_tokens for s in shared)
    table = Table("case", "p50 ms", "p90 ms", title=f"Classify scoring latency ({prompt} prompt)")
    table.add_row(f"shared prefix, {labels} labels batched", f"{p50:.1f}", f"{_p90(batched):.1f}")
    table.add_row("baseline: prefix re-run per label", f"{base:.1f}", f"{_p90(separate):.1f}")
    _console().print(table)
    _console().print(
        f"messages {len(LATENCY_MESSAGES[0])} characters, prompt up to {tokens} tokens "
        f"({reused:.0f} of them from the kept head, median); label tokens "
        f"{sum(shared[0].tokens)}; speed-up {base / p50:.1f}x; "
        + (f"goal p50 <= 150 ms: {'met' if p50 <= 150 else 'not met'} " if prompt == "zero-shot" else "")
        + f"(threads {_threads()}; the machine may be shared, so compare the ratio)"
    )


def _uncached_scorer(engine: Engine) -> Any:
    """Score on the engine's model without reusing any kept prompt head (the latency baseline)."""
    from custos.engine.scoring import score_continuations

    inner: Any = getattr(engine, "inner", engine)

    def score(prefix: str, endings: list[str]) -> ContinuationScores:
        ids = inner.tokenizer(prefix)["input_ids"]
        ends = [inner.tokenizer(e, add_special_tokens=False)["input_ids"] for e in endings]
        return score_continuations(inner.model, ids, ends, cache_kwarg=inner.cache_kwarg, reuse_prefix=False)

    return score


def _p90(samples: list[float]) -> float:
    return sorted(samples)[int(0.9 * (len(samples) - 1))]


def _threads() -> int:
    import torch

    return torch.get_num_threads()


@eval_app.command("fairness")
def eval_fairness(
    label_set: LabelSetOpt = "intents",
    with_model: Annotated[
        bool, typer.Option("--model/--no-model", help="Also compare the model's Classify output.")
    ] = True,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Name-swapped message pairs (origins, genders): how often model input and output are identical."""
    from custos.server.app import build_pseudonymizer
    from custos.tasks.fairness import check_fairness, name_swapped_pairs

    settings = settings_or_exit(config, data_dir=data_dir)
    labels = _label_set(settings, label_set)
    if with_model:
        engine, pseudonymizer = _load(settings)
    else:
        from custos.privacy.analyzer import build_analyzer

        analyzer = build_analyzer(
            spacy_model=settings.spacy_model,
            entities=settings.pii_entities,
            phone_regions=settings.pii_phone_regions,
            deny_lists=settings.pii_deny_lists,
            crm_references=settings.pii_crm_references,
        )
        pseudonymizer = build_pseudonymizer(settings, analyzer)

    def model_input(text: str) -> str:
        return labels.prefix(pseudonymizer.pseudonymize([text]).texts[0])

    def model_output(prefix: str) -> object:
        if not with_model:
            return None
        scores = engine.score_continuations(prefix, labels.continuations()).logprobs
        return tuple(round(s, 4) for s in scores)

    report = check_fairness(name_swapped_pairs(), model_input, model_output)
    table = Table("differs in", "pairs", "identical input", title="Name-swapped pairs")
    for kind, (pairs, same) in report.by_difference.items():
        table.add_row(kind, str(pairs), f"{same} ({same / pairs:.0%})")
    console = _console()
    console.print(table)
    console.print(
        f"identical model input: {report.identical_inputs}/{report.pairs} ({report.input_rate:.1%}); "
        + (
            f"identical model output: {report.identical_outputs}/{report.pairs} ({report.output_rate:.1%})"
            if with_model
            else "model output not compared (--no-model)"
        )
    )
    console.print(report.explanation)
    survived = ", ".join(f"{w} ({n} pairs)" for w, n in report.surviving.items())
    console.print(f"surviving attributes (words that still differed): {survived or 'none'}")
    retyped = ", ".join(f"{w} ({n} pairs)" for w, n in report.retyped.items())
    console.print(f"names masked as another entity type: {retyped or 'none'}")
