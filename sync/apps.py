from django.apps import AppConfig


class SyncConfig(AppConfig):
    name = "sync"
    verbose_name = "Sync engine"

    def ready(self) -> None:
        # Work stored anywhere (write path, capture, resync, reconciliation) starts a drain soon.
        from django.db.models.signals import pre_save
        from django_q.models import Schedule
        from django_q.signals import pre_enqueue

        from sync import cluster, queue, tasks

        queue.work_enqueued.connect(tasks.on_work_enqueued, dispatch_uid="sync-kick-drain")
        # django-q2 runs only the project's tasks (sync.cluster): checked on every Schedule saved
        # and every task enqueued, in every process; the workers check again (`manage.py workers`).
        pre_save.connect(cluster.check_schedule, sender=Schedule, dispatch_uid="sync-allowed-schedules")
        pre_enqueue.connect(cluster.refuse_at_enqueue, dispatch_uid="sync-allowed-tasks")
