"""Parameter-efficient fine-tuning: the core plus one file per method."""

from sciadapt.peft import adapters, lora, vpt  # noqa: F401
