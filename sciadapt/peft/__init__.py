"""Parameter-efficient fine-tuning: the core plus one file per method."""

from sciadapt.peft import adapters, bitfit, ia3, lora, norm_tuning, ssf, vpt  # noqa: F401
