"""The ``samplewise`` commands for the local services: up, down, status, logs, ui, ui-check,
and the detached submission of sweeps while ``make up`` runs."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from services import metrics as m
from services import paths, processes
from services.errors import EXIT_FAILED, EXIT_OK, ExportError, SpecError
from services.spec import load_spec


def detach(args, spec) -> int | None:
    """While `make up` services run, submit the driver detached and follow its log.

    Returns the driver's exit status, or None to run in this process instead.
    """
    from services.ops import local

    if args.foreground or args.tracking_uri or args.ray_address:
        return None
    services = paths.running_services()
    if not {"mlflow", "ray"} <= set(services):
        return None
    record = local.submit_detached(args.command, args.spec, spec.name, spec.num_trials, services)
    print(
        f"{args.command} {spec.name}: detached driver pid {record['pid']} on Ray {services['ray']['address']}, "
        f"MLflow {services['mlflow']['url']}; log {record['log']}\n"
        f"(Ctrl-C stops following, not the sweep; follow again with: make logs SWEEP={args.spec})",
        flush=True,
    )
    try:
        local.follow(Path(record["log"]), record["pid"])
    except KeyboardInterrupt:
        print(f"\nstopped following; {spec.name} goes on (pid {record['pid']})")
        return EXIT_OK
    _, status = os.waitpid(record["pid"], 0)
    return os.waitstatus_to_exitcode(status)


def cmd_up(args) -> int:
    from services.ops import local

    if args.host not in local.LOOPBACK:
        print(
            f"samplewise: warning: binding {args.host}: anyone who can reach this machine can read and "
            "change your runs and submit jobs to Ray",
            file=sys.stderr,
        )
    record = local.up(
        args.host,
        args.mlflow_port,
        args.ray_port,
        args.num_cpus,
        backend=args.backend,
        pg_port=args.pg_port,
        store_uri=os.environ.get("MLFLOW_BACKEND_STORE_URI") or None,
    )
    if "postgres" in record and record["mlflow"].get("backend") == "postgres":
        pg = record["postgres"]
        print(f"PostgreSQL     {pg['address']}  (pid {pg['pid']}, data {pg['data']})")
    print(
        f"MLflow server  {record['mlflow']['url']}  (pid {record['mlflow']['pid']}, store {record['mlflow']['store']})"
    )
    print(f"Ray head       {record['ray']['address']}  (pid {record['ray']['pid']})")
    print("sweeps now run against these, detached; make status shows them, make down stops them")
    return EXIT_OK


def cmd_down(args) -> int:
    from services.ops import local

    stopped = local.down()
    print("stopped " + ", ".join(stopped) if stopped else "nothing was running")
    return EXIT_OK


PROGRESS_LINE = re.compile(r"^\[\s*(\d+)/(\d+)\] .*?  (done|stopped by ASHA|diverged|FAILED)", re.MULTILINE)
"""A driver's line per configuration that ended (:class:`services.orchestration.progress.ProgressPrinter`)."""


def _progress(log: str) -> str:
    """How far a detached sweep is, from its driver's own log: the configurations that ended,
    of how many, and how (the driver counts them from Tune's trial states, so a resumed sweep
    counts on). Reading a log file is as fast with 100,000 runs in the store as with none."""
    try:
        with open(log, errors="replace") as f:
            text = f.read()
    except OSError:
        return "progress unknown (no log)"
    lines = PROGRESS_LINE.findall(text)
    if not lines:
        return "starting"
    outcomes = [outcome for _, _, outcome in lines]
    done, total = lines[-1][0], lines[-1][1]
    how = ", ".join(f"{outcomes.count(o)} {o.lower().replace(' by asha', '')}" for o in dict.fromkeys(outcomes))
    return f"{done}/{total} ended ({how})"


def _trial_counts(uri: str, log: str) -> str:
    """The sweep's progress, and whether its tracking store answers (within 3 s: MLflow's own
    client would retry for minutes)."""
    from services.errors import TrackingError
    from services.tracking import store

    progress = _progress(log)
    try:
        store.check_store(uri, timeout_s=3, create=False)
    except TrackingError:
        return f"{progress}; MLflow at {uri} does not answer (the driver holds its writes)"
    except Exception as err:  # noqa: BLE001 - status prints whatever it can
        return f"{progress}; MLflow at {uri}: {str(err).splitlines()[0][:80]}"
    return progress


def cmd_status(args) -> int:
    from services.ops import local

    services = paths.running_services()
    record = paths.read_services()
    shown = [("postgres", "PostgreSQL")] if "postgres" in record else []  # only where up started one
    for name, label in shown + [("mlflow", "MLflow server"), ("ray", "Ray head")]:
        svc = services.get(name)
        if svc:
            where = svc.get("url") or svc.get("address")
            store = f", store {svc['store']}" if svc.get("store") else ""
            print(f"{label:<14} running  {where}  (pid {svc['pid']}{store})")
        elif name in record and processes.leftovers(record[name]):
            print(
                f"{label:<14} broken   (pid {record[name]['pid']} is gone but {len(processes.leftovers(record[name]))} "
                "processes of its group still run; make down stops them)"
            )
        elif name in record:
            print(f"{label:<14} stopped  (pid {record[name]['pid']} is gone; make down clears it)")
        else:
            print(f"{label:<14} not started (make up starts it)")
    active = local.sweeps(active_only=True)
    print(f"sweeps in progress: {len(active) or 'none'}")
    for s in active:
        since = time.strftime("%H:%M:%S", time.localtime(s["started"]))
        counts = _trial_counts(s["tracking_uri"], s["log"])
        print(f"  {s['sweep']:<20} pid {s['pid']}  since {since}  {counts}  log {s['log']}")
    if not services:
        print(f"sweeps run embedded: local Ray, MLflow {paths.tracking_uri()}")
    return EXIT_OK


def cmd_logs(args) -> int:
    from services.ops import local

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
        print(
            f"samplewise: warning: serving the MLflow UI on {args.host}: anyone who can reach it can "
            "read and change every run",
            file=sys.stderr,
        )
    from services.ops.local import server_env, ui_command

    print(f"MLflow UI on http://{args.host}:{args.port} for {uri} (Ctrl-C stops it)", flush=True)
    os.execve(sys.executable, ui_command(uri, args.host, args.port), server_env())
    return EXIT_FAILED  # not reached


def cmd_ui_check(args) -> int:
    spec = load_spec(args.spec)
    from services.ops import local
    from services.ops.ui_check import check_ui
    from services.results import records
    from services.tracking import store

    uri = args.tracking_uri or paths.tracking_uri()
    client = store.client_for(uri)
    parent = records.find_parent_run(client, spec.name)
    children = [r.run_id for r in records.load_records(client, parent)]
    # the formulas the sweep published on its parent run (services/results/summary.py)
    expected = [v for k, v in parent.data.tags.items() if k.startswith(m.TAG_ANSWER + ".") and v.startswith("lr =")]
    if not expected:
        raise ExportError(
            f"sweep {spec.name!r}: parent run {parent.info.run_id} carries no answer yet; run make export"
        )
    plot: str | None = f"{spec.name}-lr_star.png"
    if plot not in {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(parent.info.run_id, "plots")}:
        print(f"ui-check: parent run {parent.info.run_id} has no lr*(B) plot yet (make export puts it there)")
        plot = None
    out = Path(args.out or paths.state_dir() / "ui-check")
    server = None
    if uri.startswith("sqlite:"):
        port = local.free_port()
        server = local.serve_ui(uri, port)
        ui_url = f"http://127.0.0.1:{port}"
    else:
        ui_url = uri
    try:
        result = check_ui(ui_url, parent.info.experiment_id, parent.info.run_id, children, expected, plot, out)
    finally:
        if server is not None:
            local.stop(server)
    print(
        f"ui-check: {ui_url} shows parent run {parent.info.run_id} ({spec.name}) with {result.children_shown} of "
        f"its {len(children)} child runs, the answer table ({len(expected)} formulas)"
        + (", the lr*(B) plot" if plot else "")
        + ", the trials' chart view by batch size; screenshots "
        + ", ".join(str(p) for p in result.screenshots)
    )
    return EXIT_OK


def add_commands(sub, with_store) -> None:
    """Register these commands on the ``samplewise`` subparsers."""
    p = sub.add_parser(
        "up",
        help="start a local MLflow server and Ray head in the background",
        description="Start an MLflow tracking server and a Ray head node, bound to 127.0.0.1 unless "
        "--host says otherwise. The server's store: $MLFLOW_BACKEND_STORE_URI if set (a database you run), "
        "else --backend: sqlite (.samplewise/server/mlflow.db) or postgres (a PostgreSQL cluster samplewise "
        "creates under .samplewise/postgres, listening on 127.0.0.1 only). Without --backend: postgres where "
        "that cluster exists, else sqlite.",
    )
    p.add_argument("--backend", choices=["sqlite", "postgres"], help="the MLflow server's store (see above)")
    p.add_argument("--pg-port", type=int, default=5433, help="port of the local PostgreSQL (default 5433)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--ray-port", type=int, default=6379)
    p.add_argument("--num-cpus", type=int, help="CPUs the Ray head offers (default: all)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop what up started", description="Stop exactly the processes up started.")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser(
        "status",
        help="show local services and sweeps in progress",
        description="Show the services up started and the detached sweeps in progress.",
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "logs",
        help="follow a detached sweep's log",
        description="Print and follow the newest detached driver log of a sweep until it ends.",
    )
    p.add_argument("spec", help="the sweep's spec")
    p.add_argument("--no-follow", action="store_true", help="print the log and exit")
    p.set_defaults(func=cmd_logs)

    p = with_store(
        sub.add_parser(
            "ui",
            help="serve the MLflow UI on the local store",
            description="Serve the MLflow UI for the local SQLite store.",
        )
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)

    p = with_store(
        sub.add_parser(
            "ui-check",
            help="check the MLflow UI in headless Chromium",
            description="Serve the MLflow UI and open the sweep in headless Chromium: the parent run "
            "and its child runs, the answer table in the parent's description, the lr*(B) plot among "
            "its artifacts, the trials' chart view grouped by batch size; one screenshot of each.",
        )
    )
    p.add_argument("spec", help="the sweep's spec")
    p.add_argument("--out", help="folder for the screenshots (default .samplewise/ui-check/)")
    p.set_defaults(func=cmd_ui_check)
