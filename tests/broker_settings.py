"""Settings of the django-q2 clusters the broker tests start: the production settings, read from
the environment and validated as always, with the task timeout and the redelivery delay cut to
seconds. In production a task may run for minutes (sync.tasks.RUN_SECONDS), so their minimums are
minutes too; the broker tests look at redelivery, dead-lettering and kills, not at task length.
"""

from nightingale.settings import *  # noqa: F403

# A task not acknowledged 15 s after it was handed out is handed out again (SQS's visibility
# timeout); tasks may run 45 s (the model loads in the first one). A drain handed out twice while
# it runs is harmless: the second finds the drain slot taken and returns.
Q_CLUSTER = {**Q_CLUSTER, "timeout": 45, "retry": 15}  # noqa: F405
# The broker tests' own tasks (tests/broker_tasks.py), beside the project's (sync.cluster).
EXTRA_TASKS = ("tests.broker_tasks.always_fails", "tests.broker_tasks.slow")
