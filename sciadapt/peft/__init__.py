"""Parameter-efficient fine-tuning: the core plus one file per method."""

from sciadapt.peft import lora  # noqa: F401
