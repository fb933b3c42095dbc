"""Run report: PNG plots from metrics.jsonl and a short Markdown summary of a run directory.

Reads only what a run writes (config.yaml, summary.json, metrics.jsonl, eval.json), so it
works on a finished run, a run in progress, and a copy fetched from an s3:// / obs:// output
URL. matplotlib is an optional extra imported only to draw: training never needs it, and the
Markdown summary is written without it.
"""
from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from core.config import ConfigError
from core.train.metrics import read_metrics_counted

RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "eval.json")
PLOTS = ("loss", "lr", "throughput", "accuracy")


class ReportError(ConfigError):
    """A report that cannot be made: one line naming the fix (printed by run_main, exit 2)."""


@dataclass
class Run:
    name: str
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    records: list = field(default_factory=list)
    eval_file: Optional[dict] = None
    skipped_lines: int = 0          # partial metrics.jsonl lines (a kill mid-write), skipped

    def of(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("type") == kind]


# --------------------------------------------------------------------------- reading


def latest_per_step(records: list[dict]) -> list[dict]:
    """After a resume the steps since the last checkpoint are logged twice; the later
    record is the one the run continued from. Sorted by step."""
    by_step = {}
    for r in records:
        by_step[r.get("step", 0)] = r
    return [by_step[k] for k in sorted(by_step)]


def load_run(run_dir: str | Path) -> Run:
    import yaml
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise ReportError(f"no metrics.jsonl in {run_dir} (pass a run directory: the trainer's "
                          f"system.output_dir)")
    records, skipped = read_metrics_counted(metrics)
    run = Run(name=run_dir.resolve().name, records=records, skipped_lines=skipped)
    if (run_dir / "config.yaml").is_file():
        run.config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    if (run_dir / "summary.json").is_file():
        run.summary = json.loads((run_dir / "summary.json").read_text())
    if (run_dir / "eval.json").is_file():
        run.eval_file = json.loads((run_dir / "eval.json").read_text())
    return run


def is_url(text: str) -> bool:
    return text.startswith(("s3://", "obs://"))


def fetch_run(url: str, dest: str | Path, settings=None) -> Path:
    """Copy the report's inputs (not the checkpoints) from an output URL into `dest`.
    `settings`: cloud storage settings (None: endpoint and credentials from the environment)."""
    from cloud.storage.store import open_storage
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    storage = open_storage(url, settings)
    try:
        for name in RUN_FILES:
            if storage.exists(name):
                (dest / name).write_bytes(storage.read_bytes(name))
    finally:
        storage.close()
    return dest


def cache_dir_for(url: str, cache_root: Path) -> Path:
    tail = url.rstrip("/").rsplit("/", 1)[-1] or "run"
    return cache_root / f"{tail}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


# --------------------------------------------------------------------------- numbers


def throughput(run: Run) -> Optional[float]:
    """Median images/s over the step records, leaving out each epoch's first report, which
    carries graph compilation and pipeline start-up."""
    values, seen = [], set()
    for r in latest_per_step(run.of("step")):
        if r.get("epoch") in seen:
            values.append(r["images_per_sec"])
        seen.add(r.get("epoch"))
    if not values:
        values = [r["images_per_sec"] for r in run.of("step")]
    return statistics.median(values) if values else None


def best_eval(run: Run) -> Optional[dict]:
    evals = run.of("eval")
    return max(evals, key=lambda r: (r["Top_1_Acc"], r.get("step", 0))) if evals else None


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _number(value) -> str:
    """A metric for the summary; null is how metrics.jsonl writes a non-finite value."""
    return "non-finite" if value is None else f"{value:.4f}"


def _get(tree: dict, dotted: str, default="?"):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return default if node is None else node


# --------------------------------------------------------------------------- Markdown


def summary_markdown(run: Run, plots: dict[str, str]) -> str:
    c, s = run.config, run.summary
    steps = latest_per_step(run.of("step"))
    epochs = latest_per_step(run.of("epoch"))
    world = s.get("world", 1)
    lines = [f"# Run report: {run.name}", ""]
    status = s.get("status", "in progress (no summary.json yet)")
    last_step = s.get("step", steps[-1]["step"] if steps else 0)
    lines.append(f"Status: **{status}**, step {last_step}, epoch {s.get('epoch', len(epochs))} "
                 f"of {_get(c, 'train.epochs')}.")
    if run.skipped_lines:
        lines.append(f"metrics.jsonl: {run.skipped_lines} partial line(s) skipped (cut short by "
                     f"a kill mid-write).")
    lines += ["", "## Configuration", "", "| key | value |", "|---|---|"]
    classes = s.get("classes")
    rows = [
        ("model", f"{_get(c, 'model.arch')} x{_get(c, 'model.width_mult')}, "
                  f"{len(classes) if classes else _get(c, 'model.num_classes')} classes"),
        ("input", f"{_get(c, 'data.image_size')} px (eval: resize {_get(c, 'data.eval_resize')}, "
                  f"centre crop)"),
        ("batch", f"{_get(c, 'data.batch_size')} x {world} rank(s)"),
        ("optimizer", f"{_get(c, 'optim.name')}, lr {_get(c, 'optim.lr')} "
                      f"(warmup {_get(c, 'optim.warmup_epochs')} epochs, cosine to "
                      f"{_get(c, 'optim.lr_end')}), weight decay {_get(c, 'optim.weight_decay')}"),
        ("regularisation", f"label smoothing {_get(c, 'train.label_smoothing')}, "
                           f"EMA {_get(c, 'train.ema_decay')}"),
        ("device", f"{s.get('device_target', _get(c, 'system.device_target'))}, "
                   f"amp {s.get('amp_level', _get(c, 'train.amp_level'))}"),
        ("seed", str(_get(c, "train.seed"))),
    ]
    if c:
        rows.append(("config hash", _config_digest(c)))
    lines += [f"| {k} | {v} |" for k, v in rows]

    lines += ["", "## Results", ""]
    best = best_eval(run)
    final = s.get("final_eval")
    if best:
        lines.append(f"- Best top-1 **{best['Top_1_Acc']:.4f}** (top-5 {best['Top_5_Acc']:.4f}) "
                     f"after epoch {best.get('epoch', 0) + 1}, step {best.get('step', '?')}, "
                     f"on {best.get('images', '?')} images.")
    if final:
        lines.append(f"- Final top-1 {final['Top_1_Acc']:.4f}, top-5 {final['Top_5_Acc']:.4f}, "
                     f"loss {final['Loss']:.4f}.")
    if run.eval_file:
        e = run.eval_file
        lines.append(f"- `eval` command: top-1 {e['Top_1_Acc']:.4f}, top-5 {e['Top_5_Acc']:.4f} "
                     f"on {e.get('images', '?')} images ({Path(str(e.get('checkpoint', ''))).name}).")
    if not (best or final or run.eval_file):
        lines.append("- No evaluation yet.")
    if steps:
        last = steps[-1]
        lines.append(f"- Last logged loss {_number(last['loss'])} (mean of its interval "
                     f"{_number(last.get('loss_mean', last['loss']))}).")

    lines += ["", "## Time and throughput", ""]
    if "seconds" in s:
        lines.append(f"- Training time {format_seconds(s['seconds'])} for steps "
                     f"{s.get('start_step', 0)}..{s.get('step', '?')}.")
    if epochs:
        epoch_s = statistics.median(e["epoch_time_ms"] for e in epochs) / 1000
        step_ms = statistics.median(e["per_step_ms"] for e in epochs)
        lines.append(f"- Median epoch {epoch_s:.1f} s, {step_ms:.0f} ms/step.")
    ips = throughput(run)
    if ips is not None:
        lines.append(f"- Throughput {ips:.1f} images/s (median over log intervals, all ranks; "
                     f"{ips / max(world, 1):.1f} per rank).")
    if plots:
        lines += ["", "## Plots", ""]
        titles = {"loss": "Training loss", "lr": "Learning rate", "throughput": "Images per second",
                  "accuracy": "Validation accuracy"}
        for key, file_name in plots.items():
            lines += [f"![{titles.get(key, key)}]({file_name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _config_digest(config: dict) -> str:
    """The config hash the model card carries (core.config.Config.digest)."""
    try:
        from core.config import load_config
        return load_config(None, None, base=config).digest()
    except (ConfigError, TypeError, ValueError):
        return "?"


# --------------------------------------------------------------------------- plots


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ReportError("report plots need matplotlib: pip install matplotlib "
                          "(or pass --no-plots for the Markdown summary alone)") from None
    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt
    return plt


def render_plots(run: Run, out_dir: str | Path) -> dict[str, str]:
    """{plot key: PNG file name} written into out_dir; a plot without data is skipped."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = latest_per_step(run.of("step"))
    epochs = latest_per_step(run.of("epoch"))
    evals = latest_per_step(run.of("eval"))
    per_epoch = run.summary.get("steps_per_epoch")
    written = {}

    def figure(key, title, xlabel, ylabel, draw):
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
        draw(ax)
        ax.set_title(f"{title} - {run.name}", fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        if per_epoch and key != "accuracy":
            _epoch_axis(ax, per_epoch)
        fig.tight_layout()
        name = f"{key}.png"
        fig.savefig(out_dir / name)
        plt.close(fig)
        written[key] = name

    if steps:
        x = [r["step"] for r in steps]

        def loss(ax):
            ax.plot(x, [r["loss"] for r in steps], lw=0.8, alpha=0.45, label="last step of interval")
            ax.plot(x, [r.get("loss_mean", r["loss"]) for r in steps], lw=1.6, label="interval mean")
            if epochs:
                ax.plot([r["step"] for r in epochs], [r["avg_loss"] for r in epochs], "o-", ms=3,
                        lw=1.2, label="epoch mean")

        figure("loss", "Training loss", "global step", "loss", loss)
        figure("lr", "Learning rate", "global step", "learning rate",
               lambda ax: ax.plot(x, [r["lr"] for r in steps], lw=1.6))
        figure("throughput", "Throughput", "global step", "images / s (all ranks)",
               lambda ax: ax.plot(x, [r["images_per_sec"] for r in steps], lw=1.2, marker=".", ms=3))
    if evals:
        ex = [r.get("epoch", 0) + 1 for r in evals]

        def accuracy(ax):
            ax.plot(ex, [100 * r["Top_1_Acc"] for r in evals], "o-", label="top-1")
            ax.plot(ex, [100 * r["Top_5_Acc"] for r in evals], "s-", label="top-5")
            ax.set_ylim(0, 104)  # room for markers at 100%
            best = best_eval(run)
            ax.annotate(f"best top-1 {100 * best['Top_1_Acc']:.1f}%",
                        (best.get("epoch", 0) + 1, 100 * best["Top_1_Acc"]),
                        textcoords="offset points", xytext=(0, 8), ha="center", fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))

        figure("accuracy", "Validation accuracy", "epochs completed", "accuracy (%)", accuracy)
    return written


def _epoch_axis(ax, per_epoch: int) -> None:
    """A second x axis in epochs above the step axis."""
    top = ax.secondary_xaxis("top", functions=(lambda s: s / per_epoch, lambda e: e * per_epoch))
    top.set_xlabel("epoch")


# --------------------------------------------------------------------------- entry


def make_report(source: str, out_dir: Optional[str | Path] = None, plots: bool = True,
                cache_root: Optional[Path] = None, settings=None) -> Path:
    """Write report.md (and PNGs) for a run directory or output URL; returns report.md."""
    if is_url(source):
        if cache_root is None:
            from launcher.cli import DEFAULT_CACHE
            cache_root = DEFAULT_CACHE / "reports"
        run_dir = fetch_run(source, cache_dir_for(source, cache_root), settings)
        default_out = run_dir / "report"  # beside the fetched copy in the cache, not in cwd
    else:
        run_dir = Path(source)
        if not run_dir.is_dir():
            raise ReportError(f"run directory not found: {run_dir} (pass the trainer's "
                              f"system.output_dir or an s3:// / obs:// output URL)")
        default_out = run_dir / "report"
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir else default_out
    out.mkdir(parents=True, exist_ok=True)
    written = render_plots(run, out) if plots else {}
    report = out / "report.md"
    report.write_text(summary_markdown(run, written), encoding="utf-8")
    return report
