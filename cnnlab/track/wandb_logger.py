"""One W&B run per training job: resolved config, epoch x-axis, best accuracy as max, always finished.

Mode: WANDB_MODE=disabled always wins; otherwise the config's `mode`, else WANDB_MODE, else online when
credentials are configured and offline when not (never a login prompt). An online start that cannot reach
the server within `init_timeout` seconds falls back to offline with a warning instead of blocking the run.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from cnnlab import CnnlabError

log = logging.getLogger("cnnlab")

STEP_KEYS = ("train_loss", "train_acc", "lr", "images_per_second")


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
    def __init__(self, run_dir: str | Path, run_config: dict[str, Any], project: str = "cnnlab",
                 entity: str | None = None, name: str | None = None, group: str | None = None,
                 job_type: str = "train", tags: list[str] | None = None, mode: str | None = None,
                 init_timeout: float = 15.0, run_id: str | None = None, log_checkpoint: bool = False) -> None:
        import wandb

        self.wandb = wandb
        self.run_dir, self.log_checkpoint, self.fell_back = Path(run_dir), log_checkpoint, False
        self.mode = resolve_mode(mode)
        if self.mode not in ("online", "offline", "disabled"):
            raise CnnlabError(f"logger.mode is {self.mode!r}; allowed: online, offline, disabled (or null)")
        kwargs = dict(project=project, entity=entity, name=name, group=group, job_type=job_type,
                      tags=list(tags or []), config=run_config, dir=str(run_dir), id=run_id,
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
        self.run.define_metric("step")
        for key in ("train_loss", "train_acc", "test_loss", "lr", "epoch_seconds", "images_per_second"):
            self.run.define_metric(key, step_metric="epoch")
        self.run.define_metric("test_acc", step_metric="epoch", summary="max,last")
        for key in STEP_KEYS:
            self.run.define_metric(f"step/{key}", step_metric="step")

    @property
    def run_id(self) -> str:
        return self.run.id

    def log(self, record: dict[str, Any]) -> None:
        if record["kind"] == "step":
            self.run.log({"step": record["step"], **{f"step/{k}": record[k] for k in STEP_KEYS}})
        else:
            self.run.log({k: v for k, v in record.items() if k != "kind"})

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def close(self, ok: bool = True) -> None:
        best = self.run_dir / "best.pt"
        if ok and self.log_checkpoint and best.exists() and self.fell_back:
            # after a failed online start, artifact logging would keep retrying the unreachable server
            log.warning("W&B checkpoint artifact skipped (the server was unreachable); %s stays in the run dir", best)
        elif ok and self.log_checkpoint and best.exists():
            artifact = self.wandb.Artifact(f"model-{self.run.id}", type="model", metadata=dict(self.run.summary))
            artifact.add_file(str(best))
            self.run.log_artifact(artifact, aliases=["best"])
        self.run.finish(exit_code=0 if ok else 1)
