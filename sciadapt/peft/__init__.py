"""Parameter-efficient fine-tuning: the core, adapter I/O, and one file per method."""

# the first import (adapters) loads core, whose last line loads io: core is complete by then
from sciadapt.peft import adapters, bitfit, core, ia3, io, lora, norm_tuning, ssf, vpt  # noqa: F401
