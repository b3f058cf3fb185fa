"""The Optuna part of a sweep report: the study rebuilt from the sweep's job folders, its trials
ranked, the best as a command to paste, and Optuna's own plots.

The study is rebuilt from the folders (each job's overrides, `results.json` or `error.txt`)
rather than read from the sweeper's storage, so an in-memory study, an interrupted one and one
continued from SQLite are all reported the same way, from the folder alone.
"""

from __future__ import annotations

import math
import shlex
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.cm
from omegaconf import DictConfig, OmegaConf

HISTORY_PNG = "optuna_history.png"
IMPORTANCE_PNG = "optuna_importance.png"
# A search is selected with hparams_search=NAME, which also turns a single run into a search:
# the command that reproduces one trial leaves it out.
SEARCH_GROUP = "hparams_search"


def sweeper_config(sweep_dir: Path, job_folders: Sequence[Path]) -> DictConfig | None:
    """The Optuna sweeper's config of the sweep, or None for another sweeper."""
    for folder in job_folders:
        hydra_file = folder / ".hydra" / "hydra.yaml"
        if hydra_file.is_file():
            sweeper = OmegaConf.load(hydra_file).hydra.sweeper
            return sweeper if "optuna" in str(sweeper.get("_target_", "")) else None
    return None


def _distributions(sweeper: DictConfig, jobs: Sequence[Any]) -> dict[str, Any]:
    """The search space: the sweeper's `params`, as the sweeper itself parses them, less those a
    command-line value fixed (a value outside the range); a key swept from the command line
    (not recorded in the job folders as a range) as the choice of the values its trials took."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import CategoricalDistribution

    params = OmegaConf.to_container(sweeper.get("params") or {}, resolve=True)
    space, _ = create_params_from_overrides([f"{k}={v}" for k, v in params.items()])
    seen: dict[str, list[str]] = {}
    for job in jobs:
        for override in job.overrides:
            key, _, value = override.partition("=")
            seen.setdefault(key, [])
            if value not in seen[key]:
                seen[key].append(value)
    space = {k: d for k, d in space.items() if all(_fits(d, v) for v in seen.get(k, []))}
    for key, values in seen.items():
        if key not in space and len(values) > 1 and key.split("@")[0] != "seed":
            space[key] = CategoricalDistribution([_number(v) for v in values])
    return space


def _fits(distribution: Any, text: str) -> bool:
    if hasattr(distribution, "choices"):
        return text in map(str, distribution.choices)
    value = _number(text)
    return isinstance(value, int | float) and distribution.low <= value <= distribution.high


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _value_in(distribution: Any, text: str) -> Any:
    from optuna.distributions import CategoricalDistribution, IntUniformDistribution

    if isinstance(distribution, CategoricalDistribution):
        return next((c for c in distribution.choices if str(c) == text), _number(text))
    if isinstance(distribution, IntUniformDistribution) or type(distribution).__name__.startswith(
        "Int"
    ):
        return int(float(text))
    return float(text)


def rebuild_study(sweeper: DictConfig, jobs: Sequence[Any]) -> tuple[Any, list[Any]]:
    """An in-memory Optuna study with one trial per finished or failed job (job order), and
    those jobs in trial order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    space = _distributions(sweeper, jobs)
    direction = str(sweeper.get("direction", "minimize")).split(".")[-1].lower()
    study = optuna.create_study(direction=direction, study_name=sweeper.get("study_name"))
    used = []
    for job in jobs:
        if job.status == "incomplete":
            continue
        chosen = dict(o.split("=", 1) for o in job.overrides if o.split("=", 1)[0] in space)
        params = {k: _value_in(space[k], v) for k, v in chosen.items()}
        value = job.results.get("optimized_value") if job.status == "ok" else None
        finite = value is not None and math.isfinite(value)
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: space[k] for k in params},
                value=float(value) if finite else None,
                state=optuna.trial.TrialState.COMPLETE if finite else optuna.trial.TrialState.FAIL,
                user_attrs={"folder": job.folder.name},
            )
        )
        used.append(job)
    return study, used


def best_command(job: Any) -> str:
    """The `python train.py ...` command that trains the best trial's configuration once."""
    kept = [o for o in job.overrides if o.split("=", 1)[0].lstrip("+~") != SEARCH_GROUP]
    return " ".join(["python train.py", *map(shlex.quote, kept)])


def _save(ax: Any, path: Path) -> None:
    figure = ax.figure if hasattr(ax, "figure") else ax[0].figure
    figure.set_size_inches(7, 4)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    matplotlib.pyplot.close(figure)


def plot_study(study: Any, sweep_dir: Path) -> list[str]:
    """Optuna's optimisation-history and parameter-importance plots as PNGs in `sweep_dir`;
    returns the report lines that name them (or say why one is missing)."""
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    # optuna 2.x (the version hydra-optuna-sweeper allows) calls matplotlib.cm.get_cmap, which
    # matplotlib 3.9 removed; colormaps.get_cmap is the same function.
    if not hasattr(matplotlib.cm, "get_cmap"):
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
    lines = []
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        _save(optuna_plots.plot_optimization_history(study), sweep_dir / HISTORY_PNG)
        lines.append(f"Optimisation history: `{HISTORY_PNG}`.")
    if len(complete) >= 2 and study.best_trial.params:
        # fANOVA, optuna's default evaluator, fails with current scikit-learn in optuna 2.x;
        # mean decrease in impurity is its other random-forest importance.
        evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
        _save(
            optuna_plots.plot_param_importances(study, evaluator=evaluator),
            sweep_dir / IMPORTANCE_PNG,
        )
        lines.append(f"Parameter importances (mean decrease in impurity): `{IMPORTANCE_PNG}`.")
    else:
        lines.append("Parameter importances need two completed trials.")
    return lines


def optuna_section(sweeper: DictConfig, jobs: Sequence[Any], sweep_dir: Path) -> list[str]:
    """The report's Optuna section: trials ranked by the optimised value, the best trial's
    command, and the plots."""
    import optuna

    study, used = rebuild_study(sweeper, jobs)
    metric = next((j.results.get("optimized_metric") for j in used if j.results), "?")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    order = sorted(
        range(len(used)),
        key=lambda i: (
            study.trials[i].value is None,
            -(study.trials[i].value or 0) if maximize else (study.trials[i].value or 0),
        ),
    )
    failed = sum(t.value is None for t in study.trials)
    lines = [
        "",
        "## Optuna study",
        "",
        f"Study `{sweeper.get('study_name')}`: {len(used)} trial(s), {failed} failed; "
        f"{'maximise' if maximize else 'minimise'} `{metric}` (of the best checkpoint).",
        "",
        "| rank | job | value | parameters | status |",
        "| ---: | --- | ---: | --- | --- |",
    ]
    for rank, i in enumerate(order, 1):
        trial, job = study.trials[i], used[i]
        params = " ".join(f"{k}={v}" for k, v in trial.params.items())
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        status = "ok" if trial.value is not None else f"failed: {job.error or 'not finite'}"
        lines.append(
            f"| {rank} | {job.folder.name} | {value} | `{params}` | {status.replace('|', '/')} |"
        )
    if failed < len(used):
        best = used[order[0]]
        lines += ["", "Best configuration:", "", "```bash", best_command(best), "```"]
    lines += ["", *plot_study(study, sweep_dir)]
    return lines
