from emojax.rewards.registry import combine, get, names, register  # noqa: F401
