"""What a tune found: ``report.json`` and ``report.md`` (one row per trial), Optuna's plots.

A row has the trial's parameters, its validation objective (the kept epoch's for a complete
trial, the last reported one for a pruned trial), the epochs it reached, its state and wall
time. Test metrics appear only for the selected trial(s), scored after the search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ecomjax.train.workdir import write_json_atomically
from ecomjax.tuning.space import SearchSpace

PLOTS = {
    "optimization_history.png": "plot_optimization_history",
    "param_importances.png": "plot_param_importances",
    "slice.png": "plot_slice",
    "intermediate_values.png": "plot_intermediate_values",
}


@dataclass
class TuneReport:
    study: str
    objective: str
    direction: str
    stopped: str
    elapsed_seconds: float
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    plots: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> list[dict[str, Any]]:
        rows = [r for r in self.rows if r["state"] == "COMPLETE"]
        return sorted(rows, key=lambda r: r["value"], reverse=self.direction == "maximize")

    @property
    def best(self) -> dict[str, Any] | None:
        return self.complete[0] if self.complete else None

    def top(self, k: int) -> list[dict[str, Any]]:
        return self.complete[:k]

    def to_json(self) -> dict[str, Any]:
        return {"study": self.study, "objective": self.objective, "direction": self.direction,
                "stopped": self.stopped, "elapsed_seconds": round(self.elapsed_seconds, 1),
                "counts": self.counts, "best": self.best, "trials": self.rows, "plots": self.plots}


def build_report(study: optuna.Study, space: SearchSpace, objective: str, *, stopped: str,
                 elapsed: float) -> TuneReport:
    rows = []
    baseline = study.user_attrs.get("baseline")
    marked = False
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.WAITING:
            continue
        steps = sorted(trial.intermediate_values)
        value = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else (
            trial.intermediate_values[steps[-1]] if steps else None)
        seconds = ((trial.datetime_complete - trial.datetime_start).total_seconds()
                   if trial.datetime_complete and trial.datetime_start else None)
        state = trial.state.name
        if trial.user_attrs.get("interrupted"):
            state = "INTERRUPTED"  # queued again: its run resumes in the same workdir
        is_baseline = (not marked and baseline is not None and trial.user_attrs.get("resumes_trial") is None
                       and {k: trial.params.get(k) for k in baseline} == baseline)
        marked = marked or is_baseline
        rows.append({
            "number": trial.number, "state": state, "params": {k: trial.params[k] for k in space.keys
                                                               if k in trial.params},
            "value": value, "epochs": trial.user_attrs.get("epochs", steps[-1] if steps else None),
            "best_epoch": trial.user_attrs.get("best_epoch"),
            "seconds": round(seconds, 1) if seconds is not None else None,
            "workdir": trial.user_attrs.get("workdir", f"trials/{trial.number:03d}"),
            "baseline": is_baseline,
            "resumes_trial": trial.user_attrs.get("resumes_trial"), "error": trial.user_attrs.get("error"),
        })
    counts = {s: sum(1 for r in rows if r["state"] == s) for s in ("COMPLETE", "PRUNED", "FAIL", "INTERRUPTED",
                                                                   "RUNNING")}
    return TuneReport(study.study_name, objective, study.direction.name.lower(), stopped, elapsed, rows, counts)


def write_report(study: optuna.Study, report: TuneReport, tune_dir: Path) -> None:
    report.plots = _plots(study, tune_dir)
    write_json_atomically(tune_dir / "report.json", report.to_json())
    (tune_dir / "report.md").write_text(markdown(report), encoding="utf-8")


def _plots(study: optuna.Study, tune_dir: Path) -> dict[str, str]:
    """PNG files through Optuna's matplotlib visualisation; a plot that does not apply yet (e.g.
    importances before two complete trials) is listed with the reason."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.visualization import matplotlib as vis

    made: dict[str, str] = {}
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" notices
                axes = getattr(vis, function)(study)
                figure = np.atleast_1d(axes).flat[0].figure
                figure.set_size_inches(max(figure.get_size_inches()[0], 7), max(figure.get_size_inches()[1], 4.5))
                figure.tight_layout()
                figure.savefig(tune_dir / name, dpi=110)
            plt.close(figure)
            made[name] = "written"
        except Exception as error:
            made[name] = f"not drawn: {' '.join(str(error).split())[:160]}"
    return made


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def markdown(report: TuneReport) -> str:
    keys = sorted({k for r in report.rows for k in r["params"]})
    lines = [f"# Tuning report: {report.study}", "",
             f"Objective: validation `{report.objective}` ({report.direction}), stopped by {report.stopped} after "
             f"{report.elapsed_seconds / 60:.1f} min. Trials: " +
             ", ".join(f"{v} {k.lower()}" for k, v in report.counts.items() if v) + ".", ""]
    best = report.best
    if best is not None:
        lines += [f"Best: trial {best['number']}, validation {report.objective} {best['value']:.6f} "
                  f"(epochs {_fmt(best['epochs'])}, kept epoch {_fmt(best['best_epoch'])}); config: `best.yaml`.", ""]
        for row in report.complete:
            if row.get("test_summary"):
                lines += [f"Test split of trial {row['number']} (scored after the search; "
                          f"`{row['workdir']}/eval/metrics.json`):", "", "```", row["test_summary"], "```", ""]
            elif isinstance(row.get("test"), dict) and "error" in row["test"]:
                lines += [f"Test split of trial {row['number']}: {row['test']['error']}", ""]
    header = ["trial", "state", *keys, f"valid {report.objective}", "epochs", "seconds", "note"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report.rows:
        note = "baseline (the config's own values)" if row["baseline"] else ""
        if row["resumes_trial"] is not None:
            note = f"resumes trial {row['resumes_trial']}"
        if row["error"]:
            note = row["error"][:120]
        cells = [row["number"], row["state"], *(row["params"].get(k) for k in keys), row["value"], row["epochs"],
                 row["seconds"], note]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    lines.append("")
    for name, status in report.plots.items():
        lines.append(f"![{name}]({name})" if status == "written" else f"- {name}: {status}")
    return "\n".join(lines) + "\n"


def summary_text(report: TuneReport) -> str:
    counts = ", ".join(f"{v} {k.lower()}" for k, v in report.counts.items() if v)
    if report.best is None:
        return f"{report.study}: no complete trial ({counts})"
    best = report.best
    text = (f"{report.study}: {counts}; best trial {best['number']} valid {report.objective} {best['value']:.4f} "
            f"with " + ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items()))
    if best.get("test_summary"):
        text += "\ntest split of the best trial:\n" + best["test_summary"]
    return text


__all__ = ["TuneReport", "build_report", "markdown", "summary_text", "write_report"]
