"""The jobs: one module each, built from a config by `make_task` (only the command lines call it)."""

TASKS = ("generator_grpo", "lvlm_grpo", "pretrain_generator", "pretrain_preference", "sft_lvlm")


def make_task(config):
  task = config.get("task")
  if task == "generator_grpo":
    from emojax.tasks.generator_grpo import GeneratorGRPO
    return GeneratorGRPO(config)
  if task == "pretrain_generator":
    from emojax.tasks.pretrain_generator import PretrainGenerator
    return PretrainGenerator(config)
  if task == "pretrain_preference":
    from emojax.tasks.pretrain_preference import PretrainPreference
    return PretrainPreference(config)
  if task == "sft_lvlm":
    from emojax.tasks.sft_lvlm import SFTLVLM
    return SFTLVLM(config)
  if task == "lvlm_grpo":
    from emojax.tasks.lvlm_grpo import LVLMGRPO
    return LVLMGRPO(config)
  raise ValueError(f"unknown config.task {task!r}; known: {', '.join(TASKS)}")
