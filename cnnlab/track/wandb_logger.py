"""One W&B run per training job: the resolved config, history at the training step, val_acc and test_acc
summarised as max and last, the run log, always finished with the run's status.

Mode: WANDB_MODE=disabled always wins; otherwise the config's `mode`, else WANDB_MODE, else online when
credentials are configured and offline when not (never a login prompt). An online start that cannot reach
the server within `init_timeout` seconds falls back to offline with a warning instead of blocking the run.

A resumed run continues its W&B run: the same id, and history logged at the training step, so it continues
where the checkpoint was taken, online and offline (`wandb sync` the run dir's offline runs in order). Under
`wandb agent` (WANDB_SWEEP_ID set) the agent's run id is used and no group is set, so the run joins the sweep.

The console is not captured: the run's own log file, run.log, goes to the run's files instead. It holds what
the console shows, without progress bars, in every launcher (torchrun ranks and joblib workers included).
"""

from __future__ import annotations

import logging
import netrc
import os
from typing import Annotated, Any, Literal

from annotated_types import Gt, Le

from cnnlab import CnnlabError
from cnnlab.rundir import RunDir
from cnnlab.track import Status
from cnnlab.track.metrics import read_metrics
from cnnlab.types import text

log = logging.getLogger("cnnlab")

STEP_KEYS = ("train_loss", "train_acc", "lr", "images_per_second")
MAX_AND_LAST = ("val_acc", "test_acc")  # summarised as {"max": ..., "last": ...}
# W&B's own limits: a project or entity of at most 128 characters without / \ # ? % :, a tag of at most 64
WandbName = text(r"[^/\\#?%:\s][^/\\#?%:]{0,127}", "1-128 characters, none of / \\ # ? % :")
WandbTag = text(r"[^\n]{1,64}", "1-64 characters on one line")
JobType = text(r"[A-Za-z0-9_.-]{1,64}", "1-64 letters, digits, _ . -")


def wandb_config(config: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """The resolved config as W&B records it: each node once (data.dataset and data.augment only repeat the
    top-level dataset and augment), and where the run came from."""
    data = {k: v for k, v in config["data"].items() if k not in ("dataset", "augment")}
    return {**config, "data": data, "provenance": provenance}


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc()
    except (OSError, netrc.NetrcParseError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    return auth.authenticators(host.split(":")[0]) is not None


def resolve_mode(mode: str | None) -> str:
    env = os.environ.get("WANDB_MODE")
    if env == "disabled":
        return "disabled"
    if mode:
        return mode
    if env:
        return "offline" if env == "dryrun" else env
    return "online" if has_credentials() else "offline"


class WandbLogger:
    def __init__(self, run_dir: RunDir, run_config: dict[str, Any], name: str | None, group: str | None,
                 run_id: str | None, /, project: WandbName = "cnnlab",
                 entity: WandbName | None = None, job_type: JobType = "train", tags: list[WandbTag] = (),
                 mode: Literal["online", "offline", "disabled"] | None = None,
                 init_timeout: Annotated[float, Gt(0), Le(3600)] = 15.0, log_checkpoint: bool = False) -> None:
        """A W&B run for the run in `run_dir`, which `run_config` describes, named `name` in `group`; `run_id`
        continues an earlier one, whose best values so far come from the epochs its metrics.jsonl kept."""
        import wandb

        self.wandb = wandb
        self.run_dir, self.log_checkpoint, self.fell_back = run_dir, log_checkpoint, False
        self.mode = resolve_mode(mode)
        if self.mode not in ("online", "offline", "disabled"):
            raise CnnlabError(f"WANDB_MODE is {self.mode!r}; allowed: online, offline, disabled")
        if os.environ.get("WANDB_SWEEP_ID"):  # under `wandb agent`: its run id, its sweep, no group of ours
            run_id, group = None, None
        kwargs = dict(project=project, entity=entity, name=name, group=group, job_type=job_type,
                      tags=list(tags or []), config=run_config, dir=str(run_dir.path), id=run_id,
                      resume="allow" if run_id else None)
        settings = dict(init_timeout=init_timeout, silent=True, console="off")
        try:
            self.run = wandb.init(mode=self.mode, settings=wandb.Settings(**settings), **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure to reach the server
            if self.mode != "online":
                raise
            log.warning("W&B online start failed (%s); logging offline instead, sync later with `wandb sync`",
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            self.mode, self.fell_back = "offline", True
            self.run = wandb.init(mode="offline", settings=wandb.Settings(**settings), **kwargs)
        self.run.define_metric("epoch")
        for key in ("train_loss", "train_acc", "val_loss", "test_loss", "lr", "epoch_seconds", "images_per_second"):
            self.run.define_metric(key, step_metric="epoch")
        for key in MAX_AND_LAST:  # summarised by log() itself, so that a resumed run keeps the max from before
            self.run.define_metric(key, step_metric="epoch", summary="none")
        kept = self.kept_epochs(run_id)
        self.best = {k: max((r[k] for r in kept if k in r), default=None) for k in MAX_AND_LAST}
        if run_dir.log.exists():
            self.run.save(str(run_dir.log), base_path=str(run_dir.path), policy="live")

    def kept_epochs(self, run_id: str | None) -> list[dict[str, Any]]:
        kept = read_metrics(self.run_dir.metrics) if run_id and self.run_dir.metrics.exists() else []
        return [r for r in kept if isinstance(r, dict) and r.get("kind") == "epoch"]

    @property
    def run_id(self) -> str:
        return self.run.id

    def log(self, record: dict[str, Any]) -> None:
        if record["kind"] == "step":
            self.run.log({f"step/{k}": record[k] for k in STEP_KEYS}, step=record["step"])
            return
        self.run.log({k: v for k, v in record.items() if k not in ("kind", "step")}, step=record["step"])
        for key in MAX_AND_LAST:
            if key in record:
                self.best[key] = max(record[key], self.best[key] if self.best[key] is not None else record[key])
                self.run.summary.update({key: {"max": self.best[key], "last": record[key]}})

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update({k: v for k, v in values.items() if k not in MAX_AND_LAST})

    def close(self, status: Status = "finished") -> None:
        best = self.run_dir.best
        ok = status in ("finished", "pruned")
        if ok and self.log_checkpoint and best.exists() and self.fell_back:
            # after a failed online start, artifact logging would keep retrying the unreachable server
            log.warning("W&B checkpoint artifact skipped (the server was unreachable); %s stays in the run dir", best)
        elif ok and self.log_checkpoint and best.exists():
            artifact = self.wandb.Artifact(f"model-{self.run.id}", type="model",
                                           metadata={k: v for k, v in dict(self.run.summary).items()
                                                     if not isinstance(v, dict)})
            artifact.add_file(str(best))
            self.run.log_artifact(artifact, aliases=["best"])
        self.run.summary.update({"status": status})
        # W&B shows a nonzero exit as failed; summary.status says how the run ended
        self.run.finish(exit_code={"finished": 0, "pruned": 0, "failed": 1, "interrupted": 130,
                                   "preempted": 140}[status])

