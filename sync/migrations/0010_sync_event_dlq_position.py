from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('sync', '0009_sync_event_interruptions'),
    ]

    operations = [
        migrations.AddField(
            model_name='syncevent',
            name='dlq_position',
            field=models.CharField(blank=True, max_length=300),
        ),
    ]
