"""Settings of the django-q2 clusters the broker tests start: the production settings, read from
the environment and validated as always, with the task timeout and the redelivery delay cut to
seconds. In production a task may run for minutes (sync.tasks.RUN_SECONDS), so their minimums are
minutes too; the broker tests look at redelivery, dead-lettering and kills, not at task length.
"""

from nightingale.settings import *  # noqa: F403

Q_CLUSTER = {**Q_CLUSTER, "timeout": 8, "retry": 10}  # noqa: F405
