"""`python -m cnnlab.evaluate checkpoint=<path> [tta_flip=true]`: test a trained model, class by class."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab import CONF_DIR, CnnlabError
from cnnlab.data import make_data
from cnnlab.run import build
from cnnlab.train.checkpoint import load_checkpoint, load_weights
from cnnlab.train.trainer import Trainer

log = logging.getLogger("cnnlab")


def evaluate(checkpoint: str | Path, out_dir: str | Path, tta_flip: bool = False, batch_size: int = 500,
             device: str = "auto", dataset_root: str | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    ckpt = load_checkpoint(checkpoint)
    if not isinstance(ckpt.get("config"), dict):
        raise CnnlabError(f"checkpoint {checkpoint} carries no config to rebuild its model from")
    cfg = OmegaConf.create(ckpt["config"])
    if dataset_root is not None:
        with open_dict(cfg):
            cfg.dataset.source.root = dataset_root
    model = build(cfg.model, "model")
    load_weights(model, ckpt)
    runner = Trainer(epochs=1, batch_size=batch_size, eval_batch_size=batch_size, device=device, tta_flip=tta_flip)
    data = make_data(build(cfg.dataset.source, "dataset.source"), loader=cfg.dataset.loader,
                     augment=OmegaConf.to_container(cfg.augment), batch_size=batch_size,
                     eval_batch_size=batch_size, mean=cfg.dataset.mean, std=cfg.dataset.std, device=runner.device,
                     seed=0, cache_dir=cache_dir or cfg.cache_dir, channels_last=runner.channels_last)
    model.to(runner.device)
    if runner.channels_last:
        model.to(memory_format=torch.channels_last)
    logits, labels = runner.predict(model, data.test)
    preds = logits.argmax(1)
    n = len(data.classes)
    confusion = torch.bincount(labels * n + preds, minlength=n * n).reshape(n, n).cpu()
    per_class = (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
    result = {"checkpoint": str(Path(checkpoint).resolve()), "tta_flip": tta_flip, "images": len(labels),
              "test_acc": (preds == labels).float().mean().item(),
              "test_loss": torch.nn.functional.cross_entropy(logits, labels).item(),
              "per_class_acc": dict(zip(data.classes, per_class, strict=True)),
              "confusion": confusion.tolist(), "classes": data.classes}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_confusion(confusion, data.classes, out_dir / "confusion.png", result["test_acc"])
    return result


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path, acc: float) -> None:
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
    ax.set_title(f"test accuracy {acc:.2%}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> float:
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        result = evaluate(cfg.checkpoint, out_dir, cfg.tta_flip, cfg.batch_size, cfg.device, cfg.dataset_root,
                          cfg.cache_dir)
    except CnnlabError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {e}")
    width = max(len(c) for c in result["classes"])
    lines = [f"{c:<{width}}  {a:7.2%}" for c, a in result["per_class_acc"].items()]
    log.info("test accuracy %.2f%%, loss %.4f on %d images%s\n%s\n-> %s", 100 * result["test_acc"],
             result["test_loss"], result["images"], " (flip TTA)" if cfg.tta_flip else "", "\n".join(lines), out_dir)
    return result["test_acc"]


if __name__ == "__main__":
    main()
