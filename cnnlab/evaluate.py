"""`python -m cnnlab.evaluate checkpoint=<path> [tta=flip] [split=val]` (or `cnnlab-evaluate`): test a trained
model, class by class.

A checkpoint is data: its recorded config passes the checks a run's config does (every key typed, every
`_target_` one that cnnlab declares) before the model is rebuilt from it, so no checkpoint, however crafted, can make
this run code. The data comes from this machine's config of the recorded dataset: a checkpoint never decides a
path, a URL, a download or a worker count.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab import CONF_DIR, CnnlabError
from cnnlab.config import build, validate_evaluate
from cnnlab.entry import command, reported
from cnnlab.runtime import Runtime
from cnnlab.train import checkpoint
from cnnlab.train.recorded import recorded_config
from cnnlab.train.trainer import logits

log = logging.getLogger("cnnlab")


def evaluate(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    validate_evaluate(cfg)
    ckpt = checkpoint.load(cfg.checkpoint)
    recorded = recorded_config(ckpt)
    data_cfg = local_data(recorded, cfg, ckpt["path"])
    with build(cfg.runtime, "runtime") as runtime:
        model = build(recorded.model, "model")
        checkpoint.check_tensors(f"checkpoint {ckpt['path']}", "model", ckpt["model"], model.state_dict())
        model.load_state_dict(ckpt["model"])
        data = build(data_cfg, "data")(runtime.device, 0, 1, runtime.channels_last)  # rank 0 of 1
        if data.classes != ckpt["classes"]:
            raise CnnlabError(f"checkpoint {ckpt['path']} was trained on classes {ckpt['classes'][:5]}..., the data "
                              f"has {data.classes[:5]}...")
        loader = data.test if cfg.split == "test" else data.val
        if loader is None:
            raise CnnlabError("split=val but the checkpoint's run held out no validation split: use split=test")
        model, _ = runtime.place(model)
        out, labels = predict(model, loader, runtime, cfg.tta)
    preds = out.argmax(1)
    n = len(data.classes)
    confusion = torch.bincount(labels * n + preds, minlength=n * n).reshape(n, n).cpu()
    per_class = (confusion.diag().double() / confusion.sum(1).clamp(min=1)).tolist()
    result = {"checkpoint": str(Path(cfg.checkpoint).resolve()), "split": cfg.split, "tta": cfg.tta,
              "images": len(labels), "acc": (preds == labels).sum().item() / len(labels),
              "loss": torch.nn.functional.cross_entropy(out.double(), labels).item(),
              "per_class_acc": dict(zip(data.classes, per_class, strict=True)),
              "confusion": confusion.tolist(), "classes": data.classes, "data": data.description}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(as_json(result))
    plot_confusion(confusion, data.classes, out_dir / "confusion.png",
                   f"{cfg.split} accuracy {result['acc']:.2%}{TTA_NAMES[cfg.tta]}")
    return result


TTA_NAMES = {"none": "", "flip": " (flip TTA)", "flip_translate": " (flip + translate TTA)"}


def as_json(result: dict[str, Any]) -> str:
    """eval.json: figures to 6 decimals (a 10,000-image accuracy has 4), the confusion matrix one row (true class)
    a line."""
    rows = ",\n".join(f"    {json.dumps(row)}" for row in result["confusion"])
    rounded = {k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()}
    rounded["per_class_acc"] = {c: round(a, 6) for c, a in result["per_class_acc"].items()}
    text = json.dumps({**rounded, "confusion": "@rows@"}, indent=2)
    return text.replace('"@rows@"', f"[\n{rows}\n  ]") + "\n"


# What a checkpoint's record may say of its data: which dataset (by its config's name) and what it is: the class
# count, the normalisation the model learnt with, the validation hold-out, a synthetic task's recipe. Where the data
# lives, how it is fetched and read, and where it is cached come from this machine's configs and the command line.
RECORDED_DATA = ("num_classes", "mean", "std", "val_size", "val_seed", "source.variant", "source.image_size",
                 "source.train_size", "source.test_size", "source.noise", "source.seed")


def local_data(recorded: DictConfig, cfg: DictConfig, where: str) -> DictConfig:
    """This machine's `data` config for the checkpoint's dataset, with what the record may say of it."""
    name = recorded.dataset.name
    try:
        local = machine_config([f"dataset={name}", "logger=none"])
    except MissingConfigException:
        raise CnnlabError(f"checkpoint {where} was trained on dataset {name!r}, which has no config here "
                          "(conf/dataset/): add one of that name, with --config-dir") from None
    raw = OmegaConf.to_container(local.dataset, resolve=False)
    with open_dict(local):
        for key in RECORDED_DATA:
            *parents, leaf = key.split(".")
            node = functools.reduce(lambda tree, name: tree.get(name, {}), parents, raw)
            if leaf in node:  # a key of this dataset's kind of source
                OmegaConf.update(local.dataset, key, OmegaConf.select(recorded.dataset, key))
        if cfg.dataset_root is not None:
            if local.dataset.root is None:
                raise CnnlabError(f"dataset_root is set, but checkpoint {where} was trained on {name} data, which "
                                  "is generated, not read from a dir: leave dataset_root out")
            local.dataset.root = cfg.dataset_root
        if OmegaConf.is_missing(local.dataset, "root"):
            raise CnnlabError(f"checkpoint {where} was trained on an image folder (recorded as "
                              f"{recorded.dataset.root}); a checkpoint names no paths: give this machine's copy "
                              "with dataset_root=<dir>")
        local.data.loader = recorded.data.loader
        local.data.eval_batch_size = cfg.batch_size
        local.cache_dir = cfg.cache_dir
    return local.data


def machine_config(overrides: list[str]) -> DictConfig:
    """The run config as this machine composes it (with any --config-dir of this command)."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@torch.inference_mode()
def predict(model: torch.nn.Module, loader: Any, runtime: Runtime, tta: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, on the device) and labels of a whole loader."""
    model.eval()
    outs, labels = [], []
    for x, y in loader:
        x, y = runtime.batch(x, y)
        outs.append(logits(model, x, runtime, tta))
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1 + 0.5 * n) if n <= 20 else (12, 11))
    rates = confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    result = reported(lambda: evaluate(cfg, out_dir), out_dir)
    width = max(len(c) for c in result["classes"])
    lines = [f"{c:<{width}}  {a:7.2%}" for c, a in result["per_class_acc"].items()]
    log.info("%s accuracy %.2f%%, loss %.4f on %d images%s\n%s\n-> %s", cfg.split, 100 * result["acc"],
             result["loss"], result["images"], TTA_NAMES[cfg.tta], "\n".join(lines), out_dir)
    return result["acc"]


def cli() -> None:
    command(main, "evaluate")


if __name__ == "__main__":
    cli()
