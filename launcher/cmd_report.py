"""`report`: plots and a Markdown summary of a run directory or an s3:// / obs:// output URL."""
from __future__ import annotations

from launcher.cli import add_debug_flag


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="plot a run's metrics and summarise it (needs matplotlib for plots)",
        description="Write report.md and loss/lr/throughput/accuracy PNGs from metrics.jsonl.")
    p.add_argument("run", metavar="RUN_DIR_OR_URL",
                   help="run directory (system.output_dir) or its s3:// / obs:// output URL")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report; for a URL, report/ "
                                 "in its copy under $MNV3_CACHE_DIR/reports/)")
    p.add_argument("--config", help="recipe whose storage: section reaches the URL (default: "
                                    "endpoint and credentials from the environment)")
    p.add_argument("--no-plots", dest="plots", action="store_false",
                   help="Markdown summary only (no matplotlib needed)")
    add_debug_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from launcher.report import make_report
    settings = None
    if args.config:
        from launcher.common import load_job_config
        settings = load_job_config(args.config, {})[1]
    report = make_report(args.run, args.out, plots=args.plots, settings=settings)
    print(f"report written: {report}")
    return 0
