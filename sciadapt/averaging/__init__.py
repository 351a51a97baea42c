"""Weight-space methods: soups, WiSE-FT, Model Stock and LoRA adapter arithmetic (:mod:`.arith`),
and ``sciadapt merge`` over run directories (:mod:`.merge`)."""
