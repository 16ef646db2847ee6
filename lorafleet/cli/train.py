"""``lorafleet train sft|dpo|merge`` and ``lorafleet bench train``.

The flags are generated from the config dataclasses in :mod:`lorafleet.config.train`, so every field is a
``--kebab-case`` flag with the dataclass's default and help, and the same key in a ``--config`` YAML file.
Precedence: flags given on the command line > the YAML file > the dataclass defaults.
Commands are registered on the typer apps of :mod:`lorafleet.cli` when this module is imported.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from lorafleet.cli import app, bench_app, call
from lorafleet.config.train import DpoConfig, MergeConfig, SftConfig, TrainBenchConfig

train_app = typer.Typer(
    help="Fine-tune LoRA / QLoRA / DoRA adapters (SFT, DPO) and merge them into checkpoints. See docs/train.md.",
    no_args_is_help=True)
app.add_typer(train_app, name="train")

_TYPES: dict[str, Any] = {"Path": Optional[Path], "Path | None": Optional[Path], "str": str, "str | None": Optional[str],
                          "int": int, "int | None": Optional[int], "float": float, "bool": bool,
                          "tuple[str, ...]": str}
_FLAGS = {"json_path": "--json"}  # fields whose flag is not simply the field name
_CONFIG_HELP = "YAML file of settings (keys = flag names with underscores); flags given here override it."


def _options(cls: type) -> list[inspect.Parameter]:
    """One keyword parameter per dataclass field, as a typer option with the field's default and help."""
    params = []
    for f in dataclasses.fields(cls):
        flag = _FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        default = None if f.default is dataclasses.MISSING else f.default
        decls = [f"{flag}/--no-{flag[2:]}"] if f.type == "bool" else [flag]
        if isinstance(default, tuple):
            default = ",".join(default)
        option = typer.Option(default, *decls, help=f.metadata.get("help", ""), show_default=default is not None)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=_TYPES[str(f.type)]))
    return params


def _command(cls: type, target: str, with_config: bool) -> Callable[..., None]:
    """A typer callback whose flags are ``cls``'s fields (plus ``--config`` for training); it builds the config
    from the flags the user actually gave (over the YAML file) and calls ``target`` with it."""

    def command(ctx: typer.Context, **values: Any) -> None:
        config = values.pop("config", None)
        # By name: typer vendors its own click, so the enum class depends on the typer version.
        given = {k: v for k, v in values.items() if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
        if with_config:
            cfg = call("train.config_file:load_config", cls, config, given)
        else:
            cfg = call("lorafleet.config.train:from_mapping", cls, given, "flags")
        call(target, cfg)

    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    if with_config:
        params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                        default=typer.Option(None, "--config", help=_CONFIG_HELP)))
    command.__signature__ = inspect.Signature(params + _options(cls))  # type: ignore[attr-defined]
    return command


# (typer app, command, config class, library function, takes --config, help)
_COMMANDS = (
    (train_app, "sft", SftConfig, "train.sft:run", True,
     "Supervised fine-tuning on chat / prompt-completion / text JSONL into a PEFT adapter (loss on assistant "
     "tokens only). Writes OUTPUT/adapter, report.json, loss.png, config.yaml."),
    (train_app, "dpo", DpoConfig, "train.dpo:run", True,
     "Direct preference optimization on JSONL of prompt (or messages), chosen, rejected, against the frozen "
     "reference (the base, or --init-adapter) without a second model copy."),
    (train_app, "merge", MergeConfig, "train.merge:run", False,
     "Merge an adapter (LoRA or DoRA) into its base reloaded in full precision; saves an HF safetensors "
     "checkpoint with tokenizer and chat template that `lorafleet serve` and vLLM load."),
    (bench_app, "train", TrainBenchConfig, "bench.train:run", False,
     "Our SFT path (packing + defaults) vs a plain HF Trainer + PEFT baseline on the same variable-length data, "
     "in one run: tokens_per_s and val_loss of each."),
)
for _app, _name, _cls, _target, _with_config, _help in _COMMANDS:
    _app.command(_name, help=_help)(_command(_cls, _target, _with_config))
