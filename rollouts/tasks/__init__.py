"""Tasks: prompts plus the reward that scores completions, registered by config name (``task.type``)."""

from rollouts.tasks.arithmetic import ArithmeticTask
from rollouts.tasks.base import Task, TaskSample
from rollouts.tasks.gsm8k import GSM8KTask

TASKS: dict[str, type[Task]] = {"arithmetic": ArithmeticTask, "gsm8k": GSM8KTask}

__all__ = ["TASKS", "ArithmeticTask", "GSM8KTask", "Task", "TaskSample"]
