"""What happens to a pool call when the worker that took it dies.

Celery leaves two holes here. With its default early ack a call is acked as
it starts, so a worker killed mid-call takes the call with it; and the Redis
transport keeps the messages a dead worker had prefetched in its ``unacked``
hash until the visibility timeout (an hour). The pool tasks (``execute``,
``execute_stream``, ``execute_batch``, and ``python.call`` on top of
``execute``) are therefore acknowledged late, and every worker keeps a
:class:`~.ledger.CallLedger` in the snakepit Redis beside its lease:

* which pool messages it has taken (written behind, in batches);
* which calls it has *begun* (written before the bridge sees the call).

When a worker's lease lapses, the survivor that claims it puts the messages
it held back in their queues at once (Redis broker; RabbitMQ redelivers a
dead connection's messages itself). Whoever receives such a message asks the
ledger before its call reaches a bridge (:func:`~.guard.begin_hook`): a call that never began
runs, once; a call that began elsewhere is answered with
:class:`~snakepit_celery.errors.WorkerLost`, or run once more when it was
sent ``idempotent=True``; a call that dead workers took ``max_deliveries``
times is answered with ``WorkerLost`` too. A worker that wakes after it was
declared dead finds its old messages marked restored and leaves them to the
copies the survivor put back.
"""

from snakepit_celery.recovery.guard import begin_hook, begin_now, set_ledger
from snakepit_celery.recovery.ledger import POOL_TASKS, CallLedger

__all__ = ["POOL_TASKS", "CallLedger", "begin_hook", "begin_now", "set_ledger"]
