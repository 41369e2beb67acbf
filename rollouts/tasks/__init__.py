"""Tasks: the prompts to train and evaluate on (``task.type``): your dataset's rows (``dataset``, ``gsm8k``), or
generated ones scored by the task itself (``arithmetic``, ``image_prompts``). ``factory`` builds them and their
rewards."""

from rollouts.tasks.arithmetic import ArithmeticTask
from rollouts.tasks.base import ScoredTask, Task, TaskSample

__all__ = ["ArithmeticTask", "ScoredTask", "Task", "TaskSample"]
