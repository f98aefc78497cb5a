"""Run a Kafka consumer of the group in the foreground (SYNC_TRANSPORT=kafka)."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from sync import shutdown
from sync.transport import consumer


class Command(BaseCommand):
    help = ("Consume change events from Kafka (KAFKA_TOPIC_PREFIX.high/.medium/.low) as a member of the "
            "consumer group KAFKA_GROUP_ID, apply them and commit their offsets after the vector write. "
            "SIGTERM or Ctrl-C hands the current batch back uncommitted and leaves the group.")

    def add_arguments(self, parser):
        parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
        parser.add_argument("--idle-exit", type=float, default=None,
                            help="stop once no event has come for this many seconds")
        parser.add_argument("--batch-size", type=int, default=None, help="events per poll (KAFKA_BATCH_SIZE)")
        parser.add_argument("--name", default=None, help="this consumer's name (default kafka-HOST:PID)")

    def handle(self, *args, seconds, idle_exit, batch_size, name, **options):
        if settings.SYNC_TRANSPORT != "kafka":
            raise CommandError("SYNC_TRANSPORT is not kafka: the outbox's workers apply the changes "
                               "(manage.py workers or manage.py drain)")
        shutdown.install()
        try:
            totals = consumer.run(seconds=seconds, idle_exit=idle_exit, batch_size=batch_size, name=name,
                                  stop=shutdown.requested)
        except (shutdown.StopRequested, KeyboardInterrupt):
            self.stdout.write("consume: stopped; the batch in flight went back uncommitted")
            return
        counts = totals.counts
        self.stdout.write(
            f"batches {totals.batches}, messages {totals.messages}, committed {totals.committed}, "
            f"dead-lettered {totals.dead_lettered}; upserted {counts.upserted}, metadata-only "
            f"{counts.metadata_only}, unchanged {counts.unchanged}, deleted {counts.deleted}, stale {counts.stale}")
