"""The ``samplewise`` command line; the make targets call it. The commands for the local
services (up, down, status, logs, ui, ui-check) live in :mod:`services.cli.local`.

Input problems (bad spec, bad export, bad flag) print one line and exit with status 2
before anything starts; an unusable tracking store exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from services import paths
from services.cli import local as cli_local
from services.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, SamplewiseError, SpecError
from services.spec import check_cpus, load_spec


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, like every other input error
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _load_checked(path: str):
    """Load the spec, resolve its workload and check its loss: every input check happens here, up front."""
    from services.training import workloads

    spec = load_spec(path)
    workloads.survey(spec.workload)  # builds and checks it; the driver keeps only its facts
    if not paths.ray_address():  # a local Ray gets this machine's CPUs; a cluster is checked on connecting
        check_cpus(spec, float(os.cpu_count() or 1))
    return spec


def cmd_validate(args) -> int:
    spec = _load_checked(args.spec)
    at_most = "at most " if spec.searcher.kind == "adaptive" else ""
    print(f"{args.spec}: ok ({spec.name}: {at_most}{spec.num_trials} trials, {spec.searcher.kind} search)")
    return EXIT_OK


def _summary(outcome, args, spec) -> tuple[int, list, list]:
    """Print the end-of-sweep table and outcomes; (exit status, the trial records, their groups)."""
    from services.results import records
    from services.results.analysis import summarize
    from services.results.table import format_outcomes, format_table
    from services.tracking import store

    client = store.client_for(outcome.tracking_uri)
    trials = records.load_records(client, client.get_run(outcome.parent_run_id))
    groups = summarize(trials, spec.space.lr_ranges())
    print()
    print(format_table(groups))
    if spec.searcher.kind == "adaptive":
        from services.orchestration.adaptive import stop_line

        print(stop_line(spec, groups, len(trials)))
    print(format_outcomes(trials))
    print(f"\nMLflow parent run {outcome.parent_run_id}; export the constants with: make export SWEEP={args.spec}")
    if outcome.num_errors and outcome.num_errors >= spec.num_trials:
        print(f"samplewise: every trial of {spec.name} failed; see the errors above", file=sys.stderr)
        return EXIT_FAILED, trials, groups
    return (EXIT_FAILED if outcome.num_errors and args.strict else EXIT_OK), trials, groups


def _sigterm_as_sigint() -> None:
    """SIGTERM (``kill``, ``make down``, a cluster manager) stops a driver the way Ctrl-C does:
    Tune saves its state, open runs are marked KILLED, and ``make resume`` continues."""
    import signal

    def on_term(signum, frame):
        handler = signal.getsignal(signal.SIGINT)  # Tune's own while fit() runs
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)


def cmd_drive(args) -> int:
    """sweep and resume: detached while `make up` runs, else the driver runs here."""
    spec = _load_checked(args.spec)
    detached = cli_local.detach(args, spec)
    if detached is not None:
        return detached
    from services.orchestration import runner

    uri = args.tracking_uri or paths.tracking_uri()
    _sigterm_as_sigint()
    if args.command == "resume":
        outcome = runner.resume_sweep(spec, spec_path=args.spec, tracking_uri=uri, ray_address=args.ray_address)
    else:
        outcome = runner.run_sweep(spec, spec_path=args.spec, tracking_uri=uri, ray_address=args.ray_address)
    status, trials, groups = _summary(outcome, args, spec)
    if status == EXIT_OK and spec.transfer.enabled and outcome.parent_run_id:
        print(f"\ntransfer check of {spec.name}: the answer trained at batch sizes the sweep did not train")
        _transfer(spec, args.spec, uri, args.ray_address, outcome.parent_run_id)
    if outcome.parent_run_id:
        from services.results.export import publish_answer

        # the answer on the parent run, from the analysis just printed (and the transfer check's runs)
        publish_answer(spec.name, outcome.tracking_uri, outcome.parent_run_id, trials, groups)
    return status


def _transfer(spec, spec_path: str, uri: str, ray_address, parent_run_id) -> None:
    from services.orchestration.transfer import run_transfer

    _, report = run_transfer(
        spec, spec_path=spec_path, tracking_uri=uri, ray_address=ray_address, parent_run_id=parent_run_id
    )
    print()
    print(report)
    print(f"the export carries it: make export SWEEP={spec_path}")


def cmd_transfer(args) -> int:
    """Check the answer at held-out batch sizes (what is missing of it: a finished check is read back)."""
    spec = _load_checked(args.spec)
    uri = args.tracking_uri or paths.tracking_uri()
    _sigterm_as_sigint()
    _transfer(spec, args.spec, uri, args.ray_address, args.parent_run_id)
    from services.results.export import publish_answer

    publish_answer(spec.name, uri, args.parent_run_id)  # the parent run's description gains the verdicts
    return EXIT_OK


def cmd_export(args) -> int:
    spec = load_spec(args.spec)
    from services.results.export import export_sweep

    uri = args.tracking_uri or paths.tracking_uri()
    doc, files = export_sweep(
        spec.name, uri, Path(args.out_dir or paths.exports_dir()), args.parent_run_id, holdout=not args.no_test
    )
    for const in doc["constants"]:
        formula = const["formula"] or "no usable trial"
        answer = const.get("answer") or {}
        where = f"  [{answer['source']}, B {answer['batch_range'][0]}..{answer['batch_range'][1]}]" if answer else ""
        print(f"{const['optimizer']:<8} {const['reduction']:<4} {formula}{where}")
        print(f"{'':<14}rule: {const['verdict']}")
        transfer = const.get("transfer")
        print(f"{'':<14}transfer: {transfer['verdict'] if transfer else 'not checked yet (make transfer)'}")
        if const.get("batch"):
            print(f"{'':<14}batch size: {const['batch']['advice']}")
        best = const.get("best") or {}
        if best.get("test_accuracy") is not None:
            print(
                f"{'':<14}best configuration (B={best['batch_size']}): test/accuracy {best['test_accuracy']:.4f} "
                f"(val {best['val_accuracy']:.4f})"
            )
        for warning in const.get("edge_warnings", []):
            print(f"samplewise: warning: {warning}", file=sys.stderr)
    print("wrote " + ", ".join(str(f) for f in files) + f" (also on MLflow run {doc['parent_run_id']})")
    return EXIT_OK


def cmd_compare(args) -> int:
    spec = load_spec(args.spec)
    from services.results import compare, records
    from services.tracking import store

    uri = args.tracking_uri or paths.tracking_uri()
    client = store.client_for(uri)
    parent = records.find_parent_run(client, spec.name, args.parent_run_id)
    trials = records.load_records(client, parent)
    if parent.info.status == "RUNNING":
        print(
            f"samplewise: warning: sweep {spec.name} is still running; this compares the trials done so far",
            file=sys.stderr,
        )
    table, files = compare.report(
        client, spec.name, parent.info.run_id, trials, Path(args.out_dir or paths.exports_dir())
    )
    print(table)
    print("wrote " + ", ".join(str(f) for f in files) + f" (also on MLflow run {parent.info.run_id})")
    return EXIT_OK


def cmd_lr(args) -> int:
    import json

    from services.results.lookup import lr_lookup, lr_notes, read_export
    from services.results.settings import settings_at, settings_line

    doc = read_export(args.export)
    lr, const, warnings = lr_lookup(doc, args.batch_size, args.optimizer, args.reduction, args.schedule)
    setting = settings_at(const, args.batch_size, lr)
    if args.json:
        print(json.dumps({**setting, "warnings": warnings, "evidence": lr_notes(const, args.batch_size)}))
        return EXIT_OK
    for warning in warnings:
        print(f"samplewise: warning: {warning}", file=sys.stderr)
    if args.value_only:
        print(f"{lr:.6g}")
        return EXIT_OK
    answer = const.get("answer") or {}
    used = (
        f"; {answer['source']}, fitted over B in {answer['batch_range'][0]}..{answer['batch_range'][1]}"
        if answer
        else ""
    )
    print(
        f"lr = {lr:.6g} for batch_size {args.batch_size} "
        f"({const['optimizer']}, {const['reduction']}: {const['formula']}{used})"
    )
    print(f"  at B = {args.batch_size}: {settings_line(setting)}")
    formulas = (const.get("settings") or {}).get("formulas") or {
        n: const[n] for n in ("eps", "weight_decay") if n in const
    }
    for formula in formulas.values():
        print(f"  with {formula}")
    for note in lr_notes(const, args.batch_size):
        print(f"  {note}")
    return EXIT_OK


def cmd_batch(args) -> int:
    import json

    from services.results.lookup import lr_lookup, pick_constant, read_export
    from services.results.recommend import recommend
    from services.results.settings import settings_at, settings_line

    doc = read_export(args.export)
    const = pick_constant(doc, args.optimizer, args.reduction, args.schedule)
    rec = recommend(const, args.sample_budget, args.step_budget)
    lr, const, warnings = lr_lookup(doc, rec.batch_size, const["optimizer"], const["reduction"], const.get("schedule"))
    setting = settings_at(const, rec.batch_size, lr)
    if args.json:
        print(
            json.dumps(
                {
                    **setting,
                    "goal": rec.goal,
                    "predicted_steps": rec.steps,
                    "predicted_samples": rec.samples,
                    "target_val_loss": rec.target,
                    "b_crit": rec.b_crit,
                    "b_crit_interval": list(rec.interval),
                    "note": rec.note,
                    "warnings": warnings,
                }
            )
        )
        return EXIT_OK
    for warning in warnings:
        print(f"samplewise: warning: {warning}", file=sys.stderr)
    lo, hi = rec.interval
    print(f"batch_size = {rec.batch_size} ({const['optimizer']}, {const['reduction']}: {rec.goal})")
    print(
        f"  to reach val loss {rec.target:.4g}: about {rec.steps:.4g} steps, {rec.samples:.4g} samples "
        f"(B_crit = {rec.b_crit:.3g} [{lo:.3g}, {hi:.3g}])"
    )
    print(f"  at B = {rec.batch_size}: {settings_line(setting)}")
    if rec.note:
        print(f"  {rec.note}")
    print(f"  {const['batch']['advice']}")
    return EXIT_OK


def cmd_table(args) -> int:
    from services.results.lookup import read_export
    from services.results.transfer_table import markdown

    print(markdown([read_export(path) for path in args.exports]))
    return EXIT_OK


def cmd_bench(args) -> int:
    from services.bench.bench import run_bench

    part = f"-{args.only}" if args.only else ""
    default = f"BENCHMARKS{part}.md" if not args.quick else paths.state_dir() / f"BENCHMARKS{part}-quick.md"
    out = Path(args.out or default)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = f"make bench{part}" + ("-quick" if args.quick else "")
    command = f"samplewise bench --quick --only {args.only}" if args.quick and args.only else command
    for r in run_bench(args.quick, out, command, args.only):
        met = "" if r.met is None else ("  (goal met)" if r.met else "  (goal MISSED)")
        print(f"{r.name}: {r.figure}; goal {r.goal}{met}")
    print(f"wrote {out}")
    return EXIT_OK


def cmd_verify(args) -> int:
    from services.training.verify import format_rows, verify

    if args.batch_size < 2 or args.steps < 1:
        raise SpecError(
            f"--batch-size/--steps: need batch size >= 2 and steps >= 1, got {args.batch_size}/{args.steps}"
        )
    rows = verify(batch_size=args.batch_size, steps=args.steps)
    print(format_rows(rows))
    return EXIT_OK if all(r.passed for r in rows) else EXIT_FAILED


def _verbose_flag(p) -> None:
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's and Tune's own banners, hints and status tables "
        "(else kept in .samplewise/logs/<sweep>-ray.log)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="samplewise", description="Sweep batch size x LR per sample on Ray Tune, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_store(p):
        p.add_argument(
            "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
        )
        return p

    p = sub.add_parser(
        "validate", help="check a sweep spec and exit", description="Check a sweep spec; exit 2 if it is bad."
    )
    p.add_argument("spec", help="path to a sweeps/*.yaml spec")
    p.set_defaults(func=cmd_validate)

    for name, help_text, description in (
        ("sweep", "run a sweep", "Run a sweep on Ray Tune, tracked in MLflow."),
        (
            "resume",
            "continue a sweep whose driver died",
            "Continue the newest submission of a sweep with "
            "Tuner.restore: finished trials are kept, unfinished ones continue.",
        ),
    ):
        p = with_store(sub.add_parser(name, help=help_text, description=description))
        p.add_argument("spec", help="path to a sweeps/*.yaml spec")
        p.add_argument("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
        p.add_argument("--strict", action="store_true", help="exit 1 if any trial failed")
        p.add_argument("--foreground", action="store_true", help="run the driver here even while make up runs")
        _verbose_flag(p)
        p.set_defaults(func=cmd_drive)

    p = with_store(
        sub.add_parser(
            "export",
            help="export the tuned LR-per-sample constants",
            description="Read a sweep back from MLflow and write exports/<sweep>.json and .yaml.",
        )
    )
    p.add_argument("spec", help="the sweep's spec (its name picks the MLflow experiment)")
    p.add_argument("--parent-run-id", help="export this submission instead of the newest")
    p.add_argument("--out-dir", help="directory for the export files (default: exports/)")
    p.add_argument(
        "--no-test", action="store_true", help="skip evaluating each group's best configuration once on the test split"
    )
    p.set_defaults(func=cmd_export)

    p = with_store(
        sub.add_parser(
            "transfer",
            help="check the answered LR at batch sizes the sweep did not train",
            description="Train the answered LR and a bracket of factors of 2 around it at held-out batch "
            "sizes (spec section transfer), as runs nested under the sweep's MLflow parent run, and print "
            "each check's regret; the export carries them.",
        )
    )
    p.add_argument("spec", help="the sweep's spec")
    p.add_argument("--parent-run-id", help="check this submission instead of the newest")
    p.add_argument("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    _verbose_flag(p)
    p.set_defaults(func=cmd_transfer)

    p = with_store(
        sub.add_parser(
            "compare",
            help="compare schedules at equal sample budgets",
            description="Per schedule at its tuned LR per sample: final val accuracy mean +- sd "
            "over seeds, updates, wall time, and learning curves.",
        )
    )
    p.add_argument("spec", help="the sweep's spec")
    p.add_argument("--parent-run-id", help="compare this submission instead of the newest")
    p.add_argument("--out-dir", help="directory for the report files (default: exports/)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "lr",
        help="the LR for a batch size, from an export",
        description="Print the learning rate to use at a batch size, from an exported constant.",
    )
    p.add_argument("export", help="exports/<sweep>.json or .yaml")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--optimizer", choices=["sgd", "momentum", "adam", "adamw"])
    p.add_argument("--reduction", choices=["mean", "sum"])
    p.add_argument(
        "--schedule",
        choices=["constant", "lr_decay", "batch_growth"],
        help="the schedule's constant (default: constant, when the sweep had one)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--value-only", action="store_true", help="print only the number")
    out.add_argument(
        "--json", action="store_true", help="the whole optimizer setting, warnings and evidence as one JSON object"
    )
    p.set_defaults(func=cmd_lr)

    p = sub.add_parser(
        "batch",
        help="the batch size for a goal, with its LR and optimizer setting, from an export",
        description="Recommend a batch size from the export's critical batch size: the fewest steps within "
        "a sample budget, the fewest samples within a step budget, or (no budget) B_crit itself; "
        "exit 1 where the export cannot tell.",
    )
    p.add_argument("export", help="exports/<sweep>.json or .yaml")
    p.add_argument("--optimizer", choices=["sgd", "momentum", "adam", "adamw"])
    p.add_argument("--reduction", choices=["mean", "sum"])
    p.add_argument("--schedule", choices=["constant", "lr_decay", "batch_growth"])
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--sample-budget", type=float, help="samples you can afford to reach the target loss")
    goal.add_argument("--step-budget", type=float, help="optimizer steps you can afford to reach the target loss")
    p.add_argument("--json", action="store_true", help="the batch size and whole setting as one JSON object")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser(
        "table",
        help="one Markdown table of the transfer checks of several exports",
        description="Per exported constant: the answer, the regret at each held-out batch size with "
        "its interval, and the verdict.",
    )
    p.add_argument("exports", nargs="+", help="exports/<sweep>.json files")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser(
        "bench",
        help="measure speed and overhead against the goals",
        description="Training loop vs DataLoader, orchestration overhead, search efficiency, tracking "
        "overhead, export over many runs, peak memory; writes BENCHMARKS.md.",
    )
    p.add_argument("--quick", action="store_true", help="every measurement at toy size (a smoke run)")
    p.add_argument("--out", help="report path (default BENCHMARKS.md; quick: .samplewise/BENCHMARKS-quick.md)")
    p.add_argument(
        "--only",
        choices=("adaptive", "store"),
        help="run one part alone: adaptive (the adaptive searcher vs the full grids, about 10 min; "
        "writes BENCHMARKS-adaptive.md), store (export and status over a 100,000-run store through an "
        "MLflow server on SQLite and on PostgreSQL; writes BENCHMARKS-store.md)",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "verify",
        help="check the reduction equivalences the rules rely on",
        description="Train paired models that the rules say are identical (and controls that must "
        "differ) and print the max relative parameter difference; exit 1 on a failed row.",
    )
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--steps", type=int, default=10)
    p.set_defaults(func=cmd_verify)

    cli_local.add_commands(sub, with_store)

    return parser


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Prefixed(logging.Formatter):
    """Library messages read like the CLI's own: ``samplewise: warning: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
        return f"samplewise: {level}{record.getMessage()}"


def log_to_stderr() -> None:
    """Show samplewise's module loggers (``services.*``, INFO and up) on stderr, once."""
    logger = logging.getLogger("services")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(_Prefixed())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # Ray and MLflow configure the root logger their own way


def _apply_verbose(args) -> None:
    if getattr(args, "verbose", False):
        os.environ["SAMPLEWISE_VERBOSE"] = "1"  # read by the runner, and by a detached driver's environment


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _apply_verbose(args)
    log_to_stderr()
    # a spec's package.module:function is imported from the project, as `python -m` would
    project = str(paths.project_dir())
    if project not in sys.path:
        sys.path.insert(0, project)
    try:
        return args.func(args)
    except SamplewiseError as err:
        print(f"samplewise: {err.prefix}{err}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        spec = getattr(args, "spec", None)
        again = f"; continue it with: make resume SWEEP={spec}" if args.command in ("sweep", "resume") else ""
        print(f"samplewise: interrupted; finished trials are in MLflow{again}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
