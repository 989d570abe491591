"""`python -m cnnlab.evaluate checkpoint=<path> [tta=flip] [split=val]` (or `cnnlab-evaluate`): test a trained
model, class by class.

A checkpoint is data: its recorded config is checked against cnnlab's schema (every key typed, every
`_target_` one of cnnlab's models and data sources) before the model and the data are rebuilt from it, so no
checkpoint, however crafted, can make this run code.
"""

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
from omegaconf import DictConfig, open_dict

from cnnlab import CONF_DIR, CnnlabError
from cnnlab.config import build, validate_evaluate
from cnnlab.config.compose_errors import report_compose_errors_in_one_line
from cnnlab.rundir import remove_if_empty
from cnnlab.runtime import Interrupted, Runtime
from cnnlab.train import checkpoint
from cnnlab.train.trainer import logits

log = logging.getLogger("cnnlab")


def evaluate(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    validate_evaluate(cfg)
    ckpt = checkpoint.load(cfg.checkpoint)
    recorded = checkpoint.recorded_config(ckpt)
    with open_dict(recorded):
        recorded.data.eval_batch_size = cfg.batch_size
        recorded.data.cache_dir = cfg.cache_dir
        if cfg.dataset_root is not None:
            recorded.data.dataset.root = recorded.data.dataset.source.root = cfg.dataset_root
    with build(cfg.runtime, "runtime") as runtime:
        model = build(recorded.model, "model")
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise CnnlabError(f"checkpoint {ckpt['path']}: its weights do not fit its recorded model "
                              f"({' '.join(str(e).split())[:200]})") from None
        data = build(recorded.data, "data")(device=runtime.device, channels_last=runtime.channels_last)
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
    per_class = (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
    result = {"checkpoint": str(Path(cfg.checkpoint).resolve()), "split": cfg.split, "tta": cfg.tta,
              "images": len(labels), "acc": (preds == labels).sum().item() / len(labels),
              "loss": torch.nn.functional.cross_entropy(out, labels).item(),
              "per_class_acc": dict(zip(data.classes, per_class, strict=True)), "confusion": confusion.tolist(),
              "classes": data.classes, "data": data.description}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_confusion(confusion, data.classes, out_dir / "confusion.png", f"{cfg.split} accuracy {result['acc']:.2%}")
    return result


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
    try:
        result = evaluate(cfg, out_dir)
    except CnnlabError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        remove_if_empty(out_dir)
        sys.exit(f"error: {e}")
    except Interrupted as e:
        remove_if_empty(out_dir)
        print(e, file=sys.stderr)
        sys.exit(e.exit_code)
    width = max(len(c) for c in result["classes"])
    lines = [f"{c:<{width}}  {a:7.2%}" for c, a in result["per_class_acc"].items()]
    log.info("%s accuracy %.2f%%, loss %.4f on %d images%s\n%s\n-> %s", cfg.split, 100 * result["acc"],
             result["loss"], result["images"], " (flip TTA)" if cfg.tta == "flip" else "", "\n".join(lines), out_dir)
    return result["acc"]


def cli() -> None:
    report_compose_errors_in_one_line()
    main()


if __name__ == "__main__":
    cli()
