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
  The data is checked as published (personal values sealed).
- Personal values arrive sealed (`pii:v2:...`, or `pii:v1:...` in older events; docs/EVENTS.md).
  With --open-url and a worker token (--worker-token or WORKER_TOKEN), each event holding any is
  opened through the service before it is handled. A 410 answer means the person was deleted:
  the event is handled as `erased` (its line ends in `erased` instead of the data) and the worker
  forgets the person, as for AccountDeleted. Without --open-url the values stay sealed.
- AccountDeleted: the worker deletes what it copied of the person (see forget_person). The
  ordering state stays: it holds nothing personal, and it keeps late duplicates out.

    pip install nats-py==2.16.0 jsonschema==4.26.0
    python examples/consumer.py --durable my-worker --subject 'accounts.>'
    WORKER_TOKEN=... python examples/consumer.py --durable mail-copy \\
        --open-url http://accounts.internal:8000
"""

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.request

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

SEALED = "pii:v"  # pii:v2: now, pii:v1: in older events


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--stream", default=os.environ.get("NATS_STREAM", "ACCOUNTS"))
    parser.add_argument("--subject", default="accounts.>")
    parser.add_argument("--durable", default="example-worker-py")
    parser.add_argument("--idle-exit-secs", type=float, default=0, help="stop when idle this long")
    parser.add_argument("--ack-wait-secs", type=float, default=30)
    parser.add_argument("--schemas", help="check each event's data against these JSON Schemas")
    parser.add_argument(
        "--open-url",
        help="the service's base URL: open sealed values through it before handling an event",
    )
    parser.add_argument(
        "--worker-token",
        default=os.environ.get("WORKER_TOKEN"),
        help="one of the service's WORKER_TOKENS, for --open-url (default: $WORKER_TOKEN)",
    )
    args = parser.parse_args()
    if args.open_url and not args.worker_token:
        parser.error("--open-url needs --worker-token or WORKER_TOKEN")
    return args


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


def holds_sealed(value):
    """Whether a sealed value (`pii:v2:...`, `pii:v1:...`) is anywhere in value."""
    if isinstance(value, str):
        return value.startswith(SEALED)
    if isinstance(value, list):
        return any(holds_sealed(v) for v in value)
    if isinstance(value, dict):
        return any(holds_sealed(v) for v in value.values())
    return False


def person_of(event):
    """Whose data key sealed the event: metadata.subject; in messages published before sealing,
    the user id (the aggregate of a User event, data.user_id of others)."""
    subject = (event.get("metadata") or {}).get("subject")
    if subject:
        return subject
    if event["aggregate_type"] == "User":
        return event["aggregate_id"]
    return (event.get("data") or {}).get("user_id")


class Refused(Exception):
    """401: the worker token is wrong or missing. That does not mend itself."""


class Erased(Exception):
    """410: the person was deleted; nothing of theirs opens any more."""


def opener(base_url, token):
    """A function that opens a message's sealed values through the service
    (POST /accounts/internal/events/open/) and returns its data in clear."""
    url = base_url.rstrip("/") + "/accounts/internal/events/open/"

    def open_event(payload):
        # The message as it came: the service reads `type`, `data` and `metadata`.
        request = urllib.request.Request(
            url,
            data=payload,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)["data"]
        except urllib.error.HTTPError as error:
            if error.code == 410:
                raise Erased() from None
            if error.code == 401:
                raise Refused() from None
            raise

    return open_event


def forget_person(person, why):
    """The person was deleted (AccountDeleted, or a 410 from the service): delete here what this
    worker copied of them, keyed by their user id (e.g. `delete from my_copy where user_id = %s`,
    in the transaction that records the event as handled). This example keeps no personal copy,
    so it only says so. Ids are not personal data on their own: keeping the ordering state and
    the ids of handled events is fine."""
    print(f"{person}: {why}; a real worker deletes what it holds of them here", file=sys.stderr)


async def main():
    args = parse_args()
    check = schema_checker(args.schemas)
    open_event = opener(args.open_url, args.worker_token) if args.open_url else None
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
                deleted = event["aggregate_type"] == "User" and event["type"] == "AccountDeleted"
                data = event["data"]
                erased = False
                # AccountDeleted seals nothing anyone can open (its key went with it): not opened.
                if open_event and not deleted and holds_sealed([data, event.get("metadata")]):
                    try:
                        data = await asyncio.to_thread(open_event, message.data)
                    except Erased:
                        erased = True
                    except Refused:
                        # Unacknowledged, the message comes again to a worker with a token.
                        await nc.close()
                        sys.exit("the service refused the worker token (401)")
                    except (OSError, ValueError, KeyError) as error:  # away, 5xx, a bad answer
                        print(f"cannot open {event['id']}: {error}; trying again later", file=sys.stderr)
                        await message.nak(delay=1)
                        continue
                # The worker's own effect goes here, then the state, in one transaction. (A real
                # worker does not log personal values; the example prints what it received.)
                shown = "erased" if erased else json.dumps(data, separators=(",", ":"))
                print(
                    f"{event['id']} {event['type']} v{event['version']} {event['aggregate_id']} "
                    f"at {event['recorded_at']} {shown}"
                )
                person = person_of(event)
                if person and deleted:
                    forget_person(person, "account deleted")
                elif person and erased:
                    forget_person(person, "erased (410): the account was deleted")
                last[key] = sequence
            await message.ack_sync()
            handled += 1
    print(f"handled {handled} messages", flush=True)
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
