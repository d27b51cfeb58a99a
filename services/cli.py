"""The ``samplewise`` command line; the make targets call it.

Input problems (bad spec, bad export, bad flag) print one line and exit with status 2
before anything starts; an unusable tracking store exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from services import paths
from services.errors import ENVIRONMENT_ERRORS, USAGE_ERRORS, SpecError
from services.spec import load_spec

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, like every other input error
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _load_checked(path: str):
    """Load the spec and resolve its workload: every input check happens here, up front."""
    from services import workloads

    spec = load_spec(path)
    workloads.resolve(spec.workload)
    return spec


def cmd_validate(args) -> int:
    spec = _load_checked(args.spec)
    print(f"{args.spec}: ok ({spec.name}: {spec.num_trials} trials, {spec.searcher.kind} search)")
    return EXIT_OK


def _summary(outcome, args) -> int:
    from services import export, tracking
    from services.analysis import format_outcomes, format_table, summarize

    client = tracking.client_for(outcome.tracking_uri)
    records = export.load_records(client, client.get_run(outcome.parent_run_id))
    print()
    print(format_table(summarize(records)))
    print(format_outcomes(records))
    print(f"\nMLflow parent run {outcome.parent_run_id}; export the constants with: make export SWEEP={args.spec}")
    return EXIT_FAILED if outcome.num_errors and args.strict else EXIT_OK


def _detach(args, spec) -> int | None:
    """While `make up` services run, submit the driver detached and follow its log.

    Returns the driver's exit status, or None to run in this process instead.
    """
    from services import local

    if args.foreground or args.tracking_uri or args.ray_address:
        return None
    services = local.running()
    if not {"mlflow", "ray"} <= set(services):
        return None
    record = local.submit_detached(args.command, args.spec, spec.name, spec.num_trials, services)
    print(f"{args.command} {spec.name}: detached driver pid {record['pid']} on Ray {services['ray']['address']}, "
          f"MLflow {services['mlflow']['url']}; log {record['log']}\n"
          f"(Ctrl-C stops following, not the sweep; follow again with: make logs SWEEP={args.spec})", flush=True)
    try:
        local.follow(Path(record["log"]), record["pid"])
    except KeyboardInterrupt:
        print(f"\nstopped following; {spec.name} goes on (pid {record['pid']})")
        return EXIT_OK
    _, status = os.waitpid(record["pid"], 0)
    return os.waitstatus_to_exitcode(status)


def cmd_sweep(args) -> int:
    spec = _load_checked(args.spec)
    detached = _detach(args, spec)
    if detached is not None:
        return detached
    from services import runner

    uri = args.tracking_uri or paths.tracking_uri()
    outcome = runner.run_sweep(spec, spec_path=args.spec, tracking_uri=uri, ray_address=args.ray_address)
    return _summary(outcome, args)


def cmd_resume(args) -> int:
    spec = _load_checked(args.spec)
    detached = _detach(args, spec)
    if detached is not None:
        return detached
    from services import runner

    uri = args.tracking_uri or paths.tracking_uri()
    outcome = runner.resume_sweep(spec, tracking_uri=uri, ray_address=args.ray_address)
    return _summary(outcome, args)


def cmd_export(args) -> int:
    spec = load_spec(args.spec)
    from services.export import export_sweep

    uri = args.tracking_uri or paths.tracking_uri()
    doc, files = export_sweep(spec.name, uri, Path(args.out_dir or paths.exports_dir()), args.parent_run_id)
    for const in doc["constants"]:
        formula = const["formula"] or "no usable trial"
        print(f"{const['optimizer']:<8} {const['reduction']:<4} {formula}")
    print("wrote " + ", ".join(str(f) for f in files) + f" (also on MLflow run {doc['parent_run_id']})")
    return EXIT_OK


def cmd_compare(args) -> int:
    spec = load_spec(args.spec)
    from services import compare, export, tracking

    uri = args.tracking_uri or paths.tracking_uri()
    client = tracking.client_for(uri)
    parent = export.find_parent_run(client, spec.name, args.parent_run_id)
    records = export.load_records(client, parent)
    if parent.info.status == "RUNNING":
        print(f"samplewise: warning: sweep {spec.name} is still running; this compares the trials done so far",
              file=sys.stderr)
    table, files = compare.report(client, spec.name, parent.info.run_id, records, Path(args.out_dir or paths.exports_dir()))
    print(table)
    print("wrote " + ", ".join(str(f) for f in files) + f" (also on MLflow run {parent.info.run_id})")
    return EXIT_OK


def cmd_lr(args) -> int:
    from services.export import lr_lookup, read_export

    doc = read_export(args.export)
    lr, const, warnings = lr_lookup(doc, args.batch_size, args.optimizer, args.reduction, args.schedule)
    for warning in warnings:
        print(f"samplewise: warning: {warning}", file=sys.stderr)
    if args.value_only:
        print(f"{lr:.6g}")
    else:
        print(f"lr = {lr:.6g} for batch_size {args.batch_size} "
              f"({const['optimizer']}, {const['reduction']}: {const['formula']})")
        for extra in ("eps", "weight_decay"):
            if extra in const:
                print(f"  with {const[extra]}")
    return EXIT_OK


def cmd_bench(args) -> int:
    from services.bench import run_bench

    out = Path(args.out or ("BENCHMARKS.md" if not args.quick else paths.state_dir() / "BENCHMARKS-quick.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "make bench-quick" if args.quick else "make bench"
    for r in run_bench(args.quick, out, command):
        met = "" if r.met is None else ("  (goal met)" if r.met else "  (goal MISSED)")
        print(f"{r.name}: {r.figure}; goal {r.goal}{met}")
    print(f"wrote {out}")
    return EXIT_OK


def cmd_verify(args) -> int:
    from services.verify import format_rows, verify

    if args.batch_size < 2 or args.steps < 1:
        raise SpecError(f"--batch-size/--steps: need batch size >= 2 and steps >= 1, got {args.batch_size}/{args.steps}")
    rows = verify(batch_size=args.batch_size, steps=args.steps)
    print(format_rows(rows))
    return EXIT_OK if all(r.passed for r in rows) else EXIT_FAILED


def cmd_up(args) -> int:
    from services import local

    if args.host not in local.LOOPBACK:
        print(f"samplewise: warning: binding {args.host}: anyone who can reach this machine can read and "
              "change your runs and submit jobs to Ray", file=sys.stderr)
    record = local.up(args.host, args.mlflow_port, args.ray_port, args.num_cpus)
    print(f"MLflow server  {record['mlflow']['url']}  (pid {record['mlflow']['pid']}, store {record['mlflow']['store']})")
    print(f"Ray head       {record['ray']['address']}  (pid {record['ray']['pid']})")
    print("sweeps now run against these, detached; make status shows them, make down stops them")
    return EXIT_OK


def cmd_down(args) -> int:
    from services import local

    stopped = local.down()
    print("stopped " + ", ".join(stopped) if stopped else "nothing was running")
    return EXIT_OK


def _trial_counts(uri: str, sweep: str, total: int | None) -> str:
    from services import export, tracking

    try:
        client = tracking.client_for(uri)
        parent = export.find_parent_run(client, sweep)
        runs = export.load_records(client, parent)
    except Exception as err:  # status must print whatever it can
        return f"trials unknown ({str(err).splitlines()[0][:80]})"
    states = [r.status for r in runs]
    return (f"{states.count('FINISHED')} finished, {states.count('RUNNING')} running, "
            f"{states.count('FAILED')} failed" + (f" of {total}" if total else ""))


def cmd_status(args) -> int:
    from services import local

    services = local.running()
    record = local.read_record()
    for name, label in (("mlflow", "MLflow server"), ("ray", "Ray head")):
        svc = services.get(name)
        if svc:
            where = svc.get("url") or svc.get("address")
            print(f"{label:<14} running  {where}  (pid {svc['pid']})")
        elif name in record:
            print(f"{label:<14} stopped  (pid {record[name]['pid']} is gone; make down clears it)")
        else:
            print(f"{label:<14} not started (make up starts it)")
    active = local.sweeps(active_only=True)
    print(f"sweeps in progress: {len(active) or 'none'}")
    for s in active:
        since = time.strftime("%H:%M:%S", time.localtime(s["started"]))
        print(f"  {s['sweep']:<20} pid {s['pid']}  since {since}  {_trial_counts(s['tracking_uri'], s['sweep'], s.get('num_trials'))}  log {s['log']}")
    if not services:
        print(f"sweeps run embedded: local Ray, MLflow {paths.tracking_uri()}")
    return EXIT_OK


def cmd_logs(args) -> int:
    from services import local

    spec = load_spec(args.spec)
    records = [r for r in local.sweeps() if r["sweep"] == spec.name]
    if not records:
        raise SpecError(f"{args.spec}: no detached run of sweep {spec.name!r} (sweeps run detached while make up runs)")
    newest = records[0]
    if args.no_follow or not newest["alive"]:
        print(Path(newest["log"]).read_text(errors="replace"), end="")
        return EXIT_OK
    try:
        local.follow(Path(newest["log"]), newest["pid"])
    except KeyboardInterrupt:
        print()
    return EXIT_OK


def cmd_ui(args) -> int:
    uri = args.tracking_uri or paths.tracking_uri()
    if not uri.startswith("sqlite:"):
        print(f"MLflow UI: {uri} (the tracking server's own UI; open it in a browser)")
        return EXIT_OK
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"samplewise: warning: serving the MLflow UI on {args.host}: anyone who can reach it can "
              "read and change every run", file=sys.stderr)
    from services.local import ui_command

    print(f"MLflow UI on http://{args.host}:{args.port} for {uri} (Ctrl-C stops it)", flush=True)
    os.execv(sys.executable, ui_command(uri, args.host, args.port))
    return EXIT_FAILED  # not reached


def cmd_ui_check(args) -> int:
    spec = load_spec(args.spec)
    from services import export, local, tracking
    from services.ui_check import check_runs_page

    uri = args.tracking_uri or paths.tracking_uri()
    client = tracking.client_for(uri)
    parent = export.find_parent_run(client, spec.name)
    children = [r.run_id for r in export.load_records(client, parent)]
    out = Path(args.out or paths.state_dir() / "ui-check.png")
    server = None
    if uri.startswith("sqlite:"):
        port = local.free_port()
        server = local.serve_ui(uri, port)
        ui_url = f"http://127.0.0.1:{port}"
    else:
        ui_url = uri
    try:
        shown = check_runs_page(ui_url, parent.info.experiment_id, parent.info.run_id, children, out)
    finally:
        if server is not None:
            local.stop(server)
    print(f"ui-check: {ui_url} shows parent run {parent.info.run_id} ({spec.name}) with {shown} of its "
          f"{len(children)} child runs; screenshot {out}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="samplewise", description="Sweep batch size x LR per sample on Ray Tune, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_store(p):
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
        return p

    p = sub.add_parser("validate", help="check a sweep spec and exit", description="Check a sweep spec; exit 2 if it is bad.")
    p.add_argument("spec", help="path to a sweeps/*.yaml spec")
    p.set_defaults(func=cmd_validate)

    p = with_store(sub.add_parser("sweep", help="run a sweep", description="Run a sweep on Ray Tune, tracked in MLflow."))
    p.add_argument("spec", help="path to a sweeps/*.yaml spec")
    p.add_argument("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--strict", action="store_true", help="exit 1 if any trial failed")
    p.add_argument("--foreground", action="store_true", help="run the driver here even while make up runs")
    p.set_defaults(func=cmd_sweep)

    p = with_store(sub.add_parser("resume", help="continue a sweep whose driver died",
                                  description="Continue the newest submission of a sweep with Tuner.restore: "
                                              "finished trials are kept, unfinished ones continue."))
    p.add_argument("spec", help="the sweep's spec")
    p.add_argument("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--strict", action="store_true", help="exit 1 if any trial failed")
    p.add_argument("--foreground", action="store_true", help="run the driver here even while make up runs")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("up", help="start a local MLflow server and Ray head in the background",
                       description="Start an MLflow tracking server (SQLite store under .samplewise/server) and a "
                                   "Ray head node, bound to 127.0.0.1 unless --host says otherwise.")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--ray-port", type=int, default=6379)
    p.add_argument("--num-cpus", type=int, help="CPUs the Ray head offers (default: all)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop what up started", description="Stop exactly the processes up started.")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="show local services and sweeps in progress",
                       description="Show the services up started and the detached sweeps in progress.")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="follow a detached sweep's log", description="Print and follow the newest "
                       "detached driver log of a sweep until it ends.")
    p.add_argument("spec", help="the sweep's spec")
    p.add_argument("--no-follow", action="store_true", help="print the log and exit")
    p.set_defaults(func=cmd_logs)

    p = with_store(sub.add_parser("export", help="export the tuned LR-per-sample constants",
                                  description="Read a sweep back from MLflow and write exports/<sweep>.json and .yaml."))
    p.add_argument("spec", help="the sweep's spec (its name picks the MLflow experiment)")
    p.add_argument("--parent-run-id", help="export this submission instead of the newest")
    p.add_argument("--out-dir", help="directory for the export files (default: exports/)")
    p.set_defaults(func=cmd_export)

    p = with_store(sub.add_parser("compare", help="compare schedules at equal sample budgets",
                                  description="Per schedule at its tuned LR per sample: final val accuracy mean +- sd "
                                              "over seeds, updates, wall time, and learning curves."))
    p.add_argument("spec", help="the sweep's spec")
    p.add_argument("--parent-run-id", help="compare this submission instead of the newest")
    p.add_argument("--out-dir", help="directory for the report files (default: exports/)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("lr", help="the LR for a batch size, from an export",
                       description="Print the learning rate to use at a batch size, from an exported constant.")
    p.add_argument("export", help="exports/<sweep>.json or .yaml")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--optimizer", choices=["sgd", "momentum", "adam", "adamw"])
    p.add_argument("--reduction", choices=["mean", "sum"])
    p.add_argument("--schedule", choices=["constant", "lr_decay", "batch_growth"],
                   help="the schedule's constant (default: constant, when the sweep had one)")
    p.add_argument("--value-only", action="store_true", help="print only the number")
    p.set_defaults(func=cmd_lr)

    p = sub.add_parser("bench", help="measure speed and overhead against the goals",
                       description="Training loop vs DataLoader, orchestration overhead, search efficiency, tracking "
                                   "overhead, export over many runs, peak memory; writes BENCHMARKS.md.")
    p.add_argument("--quick", action="store_true", help="every measurement at toy size (a smoke run)")
    p.add_argument("--out", help="report path (default BENCHMARKS.md; quick: .samplewise/BENCHMARKS-quick.md)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("verify", help="check the reduction equivalences the rules rely on",
                       description="Train paired models that the rules say are identical (and controls that must "
                                   "differ) and print the max relative parameter difference; exit 1 on a failed row.")
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--steps", type=int, default=10)
    p.set_defaults(func=cmd_verify)

    p = with_store(sub.add_parser("ui", help="serve the MLflow UI on the local store",
                                  description="Serve the MLflow UI for the local SQLite store."))
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)

    p = with_store(sub.add_parser("ui-check", help="check the MLflow UI in headless Chromium",
                                  description="Serve the MLflow UI, open the sweep's runs page in headless Chromium, "
                                              "expand its parent run, find its child runs and save a screenshot."))
    p.add_argument("spec", help="the sweep's spec")
    p.add_argument("--out", help="screenshot path (default .samplewise/ui-check.png)")
    p.set_defaults(func=cmd_ui_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USAGE_ERRORS as err:
        print(f"samplewise: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ENVIRONMENT_ERRORS as err:
        print(f"samplewise: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("samplewise: interrupted; finished trials are in MLflow", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
