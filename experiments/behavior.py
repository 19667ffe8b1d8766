"""`psec-jax behavior`: train SAC on one task and save its behaviour policies (random / replay /
medium / expert snapshots) to `<workdir>/policy`; each evaluation is appended to
`<workdir>/metrics.jsonl` as it happens, the level returns go to `<workdir>/summary.json`.

Installing a new policy into the package is deliberately manual: review the returns in the summary,
then copy `<workdir>/policy` to `psec_jax/data/policies/<env>/` and commit it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections

from psec_jax import runs
from psec_jax.data import behavior
from psec_jax.workdir import WorkdirError

check_config = behavior.check_config  # run by the CLI before anything is built or compiled


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    earlier = [f for f in (runs.METRICS_FILE, "policy") if (Path(workdir) / f).exists()]
    if earlier:  # SAC training keeps no checkpoints: a second run would mix its files with the first's
        raise WorkdirError(f"workdir {workdir} already holds a behavior run ({', '.join(earlier)}); "
                           f"behavior runs do not resume: use a new --workdir")
    runs.save_config(workdir, config)
    with runs.MetricsWriter(workdir, tensorboard_from=0) as metrics:  # one line per evaluation, for watching a run
        policies, info = behavior.train(config, log=lambda rec: metrics.write(rec["env_steps"], rec))
    path = behavior.save(Path(workdir) / "policy", policies, info)
    summary = {f"return/{name}": lvl["return"] for name, lvl in info["levels"].items()}
    summary["train_seconds"] = info["train_seconds"]
    summary["env_steps"] = info["curve"][-1]["env_steps"]
    runs.write_summary(workdir, summary)
    print(runs.format_table([{"level": n, **l} for n, l in info["levels"].items()]))
    print(f"saved {path}")
    return summary
