"""An example worker in Python (nats-py): reads the account events from NATS JetStream the way
the Rust example (examples/consumer.rs) does. Copy it to start a worker of your own.

- A durable pull consumer (--durable): several copies share the work, and a restarted worker
  continues where the group stopped; a new durable name replays the stream from its start.
- Explicit acks. Delivery is at least once, and a redelivery can arrive after later events of
  the same aggregate: the worker keeps the last `sequence` it handled per aggregate, handles the
  next one, skips older ones (duplicates) and naks later ones with a delay until the missing ones
  came. That needs every event of the aggregate type: subscribe to `<prefix>.user.>`,
  `<prefix>.session.>` or `<prefix>.>`. Here the state is in memory; a real worker records it in
  its own store, in the same transaction as its effects.
- With --schemas DIR, each event's `data` is checked against DIR/<aggregate_type>/<type>.json
  (docs/schemas; needs the `jsonschema` package), and the worker stops at the first mismatch.

    pip install nats-py==2.16.0 jsonschema==4.26.0
    python examples/consumer.py --durable my-worker --subject 'accounts.>'
"""

import argparse
import asyncio
import json
import os
import sys

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--stream", default=os.environ.get("NATS_STREAM", "ACCOUNTS"))
    parser.add_argument("--subject", default="accounts.>")
    parser.add_argument("--durable", default="example-worker-py")
    parser.add_argument("--idle-exit-secs", type=float, default=0, help="stop when idle this long")
    parser.add_argument("--ack-wait-secs", type=float, default=30)
    parser.add_argument("--schemas", help="check each event's data against these JSON Schemas")
    return parser.parse_args()


def schema_checker(directory):
    """A function that raises when an event's data does not match its type's schema."""
    if not directory:
        return lambda event: None
    import jsonschema

    validators = {}

    def check(event):
        key = (event["aggregate_type"], event["type"])
        if key not in validators:
            path = os.path.join(directory, key[0], key[1] + ".json")
            with open(path, encoding="utf-8") as f:
                schema = json.load(f)
            validators[key] = jsonschema.Draft202012Validator(
                schema, format_checker=jsonschema.FormatChecker()
            )
        validators[key].validate(event["data"])

    return check


async def main():
    args = parse_args()
    check = schema_checker(args.schemas)
    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()
    config = ConsumerConfig(
        durable_name=args.durable,
        filter_subject=args.subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=args.ack_wait_secs,
        max_ack_pending=256,
    )
    subscription = await js.pull_subscribe(args.subject, durable=args.durable, stream=args.stream, config=config)
    last = {}  # (aggregate_type, aggregate_id) -> last sequence handled
    handled = 0
    idle = 0.0
    while True:
        try:
            messages = await subscription.fetch(batch=64, timeout=1)
        except (NatsTimeout, asyncio.TimeoutError):  # nats-py raises either when idle
            idle += 1
            if args.idle_exit_secs and idle >= args.idle_exit_secs:
                break
            continue
        idle = 0.0
        for message in messages:
            try:
                event = json.loads(message.data)
                key = (event["aggregate_type"], event["aggregate_id"])
                sequence = event["sequence"]
            except (ValueError, KeyError) as error:
                print(f"not an account event: {error}", file=sys.stderr)
                await message.ack()
                continue
            expected = last.get(key, 0) + 1
            if sequence > expected:
                # An earlier event of this aggregate is still on its way (a redelivery): later.
                await message.nak(delay=0.2)
                continue
            if sequence < expected:
                print(f"{event['id']} again (redelivery), skipped")
            else:
                check(event)
                # The worker's own effect goes here, then the state, in one transaction.
                data = json.dumps(event["data"], separators=(",", ":"))
                print(
                    f"{event['id']} {event['type']} v{event['version']} {event['aggregate_id']} "
                    f"at {event['recorded_at']} {data}"
                )
                last[key] = sequence
            await message.ack_sync()
            handled += 1
    print(f"handled {handled} messages", flush=True)
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
