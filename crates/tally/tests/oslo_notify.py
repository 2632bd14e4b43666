"""Publishes notifications through the real oslo.messaging Notifier.

Used by tests/oslo.rs. Reads one JSON object per stdin line:
{"time": "2026-10-01T00:00:00", "event_type": "...", "payload": {...}}
and sends each with the messagingv2 driver, as a Nova service would, with
the notifier's clock set to "time" (oslo_utils' test override).
Arguments: transport URL, topic, publisher id.
"""
import datetime
import json
import sys

from oslo_config import cfg
import oslo_messaging
from oslo_utils import timeutils

url, topic, publisher = sys.argv[1:4]
transport = oslo_messaging.get_notification_transport(cfg.CONF, url=url)
notifier = oslo_messaging.Notifier(
    transport, driver="messagingv2", publisher_id=publisher, topics=[topic]
)
for line in sys.stdin:
    if not line.strip():
        continue
    m = json.loads(line)
    timeutils.set_time_override(datetime.datetime.fromisoformat(m["time"]))
    # The context is the actor (an administrator here), not the owner.
    notifier.info({"project_id": "admin-project", "user_id": "admin"}, m["event_type"], m["payload"])
timeutils.clear_time_override()
transport.cleanup()
