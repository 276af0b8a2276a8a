"""The out dir of a training run: the check that refuses to start a new run in another run's
out dir (:func:`_check_run_config`), its creation (:func:`_setup_output`) and the logger of
progress lines, ``metrics.jsonl`` records and TensorBoard scalars (:class:`_Logger`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, ConfigError, config_to_dict


class _Logger:
    """Progress on a terminal (tqdm when installed), plain lines otherwise; JSONL metrics;
    TensorBoard when installed."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.jsonl = out_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.tb = None

    def record(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def print(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)


def _config_differences(new: dict[str, Any], old: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [prefix.rstrip(".") or "config"] if new != old else []
    keys = list(new) + [k for k in old if k not in new]
    return [d for k in keys for d in _config_differences(new.get(k), old.get(k), f"{prefix}{k}.")]


def _with_defaults(old: Any, defaults: Any) -> Any:
    """``old`` with the keys it lacks taken from ``defaults`` (a run written before a key
    existed ran with its default)."""
    if not isinstance(old, dict) or not isinstance(defaults, dict):
        return old
    merged = {k: _with_defaults(old[k], defaults[k]) if k in defaults else old[k] for k in old}
    merged.update({k: v for k, v in defaults.items() if k not in old})
    return merged


#: config keys that change how a run is executed, not which run it is
_RUN_NEUTRAL_KEYS = {
    "data.skip_bad_images",
    "data.num_workers",
    "train.resume",
    "train.log_interval",
    "eval.batch_size",
}

#: files that show that an out dir holds the results of a run
_RUN_RESULTS = ("last.pth", "best.pth", "metrics.jsonl")


def _check_run_config(cfg: Config, out_dir: Path, resume: bool) -> None:
    """Refuse to start a new run in an out dir whose ``config.yaml`` is another run's unless
    resuming it. Allowed: the same config (a re-run; keys of ``_RUN_NEUTRAL_KEYS`` such as
    ``data.skip_bad_images`` may differ), and an out dir without results (no ``last.pth``,
    ``best.pth`` or ``metrics.jsonl``: a run that failed during its set-up).

    Raises:
        ConfigError: naming the out dir, the first differing keys and the two ways out.
    """
    path = out_dir / "config.yaml"
    if resume or not path.is_file() or not any((out_dir / name).exists() for name in _RUN_RESULTS):
        return
    new = yaml.safe_load(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        old = None
    old = _with_defaults(old, yaml.safe_load(yaml.safe_dump(config_to_dict(Config()), sort_keys=False)))
    diff = [k for k in _config_differences(new, old) if k not in _RUN_NEUTRAL_KEYS]
    if diff:
        keys = ", ".join(diff[:4]) + (", …" if len(diff) > 4 else "")
        raise ConfigError(
            f"{path}: train.out_dir holds another run (its config differs in {keys}); "
            "pass --resume to continue that run, or set train.out_dir to a new folder"
        )


def _setup_output(out_dir: Path, is_main: bool) -> tuple[Path, _Logger]:
    """Create ``out_dir`` (main process) and the logger (silent on the other ranks)."""
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir, _Logger(out_dir, is_main)
