"""The ``kalm`` command line.

    kalm run  [--config FILE|PRESET] [--run-id ID] [--only STAGE ...] [--from STAGE] [--set key=value ...]
    kalm eval MODEL --tasks PATH_OR_NAMES --output DIR
    kalm ablate [--config FILE|PRESET] [--variants NAME ...] [--seeds N] [--set key=value ...]
    kalm ui   [--port 4200]
    kalm check-config FILE|PRESET

Exit status: 0 done; 2 the input or the command is the user's to fix (a bad config, a bad row in a data
or task file, no finished stage to build on); 1 a stage failed otherwise (a retry may help).

``eval`` and ``check-config`` need no Prefect; ``run`` and ``ui`` import the orchestration
layer (flows/) lazily, so this module keeps kalm's rule of no Prefect import at load time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from kalm.stage import STAGES as STAGE_NAMES  # pydantic only: no Prefect at load time


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value, e.g. --set train.max_steps=10")
        out[key] = yaml.safe_load(value)
    return out


def _offline_defaults() -> None:
    # The CPU default uses only models shipped in Python packages; never wait on a hub.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("KALM_ONLINE") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cmd_run(args: argparse.Namespace) -> int:
    from kalm.config import ConfigError
    from kalm.rerun import carried_overrides, missing_run_error, run_config, select_stages

    overrides = _parse_sets(args.set or [])
    if (args.only or args.start) and not args.run_id:
        print(f"error: {'--only' if args.only else '--from'} reruns stages of an existing run: give its --run-id "
              "(the folder name under runs_dir)", file=sys.stderr)
        return 2
    try:
        cfg, _, _ = run_config(args.config, args.run_id, overrides)  # fail on a bad config before Prefect starts
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.only or args.start:  # a mistyped run id: said before Prefect starts or any folder is made
        missing = missing_run_error(cfg, args.run_id, select_stages(args.only, args.start), config=args.config,
                                    sets=bool(overrides))
        if missing:
            print(f"error: {missing}", file=sys.stderr)
            return 2
    carried = carried_overrides(cfg.runs_dir, args.run_id, overrides)
    if carried:  # said, not silent: a user rerunning with --config FILE may expect FILE's values for these
        print(f"note: run {args.run_id!r} keeps the settings given with --set on its earlier reruns: "
              + ", ".join(f"{k}={v}" for k, v in carried.items()) + " (--set KEY=VALUE changes one)", file=sys.stderr)
    from flows.retrain import retrain
    from flows.stage_runner import StageFailed

    try:
        summary = retrain(config=args.config, run_id=args.run_id, overrides=overrides or None,
                          only=args.only or None, start=args.start)
    except StageFailed as e:  # the manifest and report hold the details; the user needs the reason and fix
        print(f"error: {e}", file=sys.stderr)
        return e.exit_status
    print(json.dumps({k: summary[k] for k in ("run_id", "run_dir", "report")} |
                     {"scores": {m: s.get("average") for m, s in summary["scores"].items()}}))
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from kalm.config import ConfigError, load_config

    overrides = _parse_sets(args.set or [])
    try:
        spec = load_config(args.config, overrides).ablation
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    unknown = [v for v in args.variants or [] if v not in spec.variants]
    if unknown or (args.seeds is not None and args.seeds < 1):  # before Prefect starts, as for a bad config
        print(f"error: unknown variants {unknown}: choose from {', '.join(spec.variants)} (ablation.variants)"
              if unknown else f"error: --seeds {args.seeds}: an ablation needs at least one seed", file=sys.stderr)
        return 2
    from flows.ablation import ablation
    from flows.stage_runner import StageFailed

    try:
        result = ablation(config=args.config, variants=args.variants or None, overrides=overrides or None,
                          ablation_id=args.ablation_id, seeds=list(range(args.seeds)) if args.seeds else None)
    except StageFailed as e:  # a variant's run failed: its manifest and report say which stage and why
        print(f"error: {e}", file=sys.stderr)
        return e.exit_status
    print(Path(result["markdown"]).read_text())
    print(json.dumps({"ablation_id": result["ablation_id"], "markdown": result["markdown"],
                      "average": {k: round(v, 4) for k, v in result["average"].items()},
                      "verdicts": result["verdicts"],
                      "seconds": {k: round(v, 1) for k, v in result["seconds"].items()}}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from kalm.evaluation.cli import eval_command
    from kalm.evaluation.errors import EvalError
    from kalm.models import ModelRefError

    try:
        summary = eval_command(args.model, args.tasks, Path(args.output), batch_size=args.batch_size,
                               matryoshka_dim=args.matryoshka_dim, corpus_chunk_size=args.corpus_chunk_size,
                               max_samples=args.max_samples)
    except (EvalError, ModelRefError) as e:  # bad task files, task names, model refs or settings: names the fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from tasks.common import configure_prefect_home

    configure_prefect_home()
    url = f"http://{args.host}:{args.port}"
    print(f"Prefect UI at {url} (state in {os.environ['PREFECT_HOME']}).\n"
          f"Send runs there with: export PREFECT_API_URL={url}/api", flush=True)
    env = {**os.environ, "PREFECT_UI_API_URL": f"{url}/api"}  # the UI's browser code calls this API
    return subprocess.call([sys.executable, "-m", "prefect", "server", "start", "--host", args.host,
                            "--port", str(args.port)], env=env)


def cmd_check_config(args: argparse.Namespace) -> int:
    from kalm.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, _parse_sets(args.set or []))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kalm", description="Train KaLM-style text-embedding models with Prefect.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the retrain flow (or chosen stages of an existing run)")
    r.add_argument("--config", default=None,
                   help="preset name (configs/*.yaml) or YAML file (default: the config recorded in --run-id's "
                        "manifest for an existing run, else cpu-demo); an existing run's config must match it")
    r.add_argument("--run-id", default=None, help="run folder name under runs_dir (default: new)")
    r.add_argument("--only", nargs="+", choices=STAGE_NAMES, help="rerun only these stages of --run-id")
    r.add_argument("--from", dest="start", choices=STAGE_NAMES, help="rerun this stage and all after it")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (dotted key)")
    r.set_defaults(func=cmd_run)

    a = sub.add_parser("ablate", help="run the ablation variants of a config and print the comparison table")
    a.add_argument("--config", default="cpu-demo", help="preset name (configs/*.yaml) or YAML file")
    a.add_argument("--variants", nargs="+", help="subset of the config's ablation.variants (default: all)")
    a.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="run every variant with seeds 0..N-1 (default: the config's ablation.seeds)")
    a.add_argument("--ablation-id", default=None, help="folder name under runs_dir for the table (default: new)")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (dotted key)")
    a.set_defaults(func=cmd_ablate)

    e = sub.add_parser("eval", help="evaluate a model with mteb; prints a JSON summary last")
    e.add_argument("model", help="model folder, 'pkg:<module>' or hub id")
    e.add_argument("--tasks", required=True, help="folder of task folders, one task folder, or comma-separated mteb names")
    e.add_argument("--output", required=True, help="folder for mteb results")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--matryoshka-dim", type=int, default=None)
    e.add_argument("--corpus-chunk-size", type=int, default=50_000,
                   help="retrieval: documents encoded and scored at once (bounds memory)")
    e.add_argument("--max-samples", type=int, default=None, metavar="N",
                   help="score a seeded subsample of each local task folder (N pairs / test texts / sentences per "
                        "clustering problem / corpus documents); quick, not comparable to the leaderboard")
    e.set_defaults(func=cmd_eval)

    u = sub.add_parser("ui", help="start the Prefect server and UI on 127.0.0.1")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=4200)
    u.set_defaults(func=cmd_ui)

    c = sub.add_parser("check-config", help="validate a config and print it resolved")
    c.add_argument("config")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.set_defaults(func=cmd_check_config)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    _offline_defaults()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
