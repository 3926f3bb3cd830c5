"""``GET /metrics`` on the link handler: the database gauges, for Prometheus.

The link handler faces the Internet (holders click their links), and the
figures say how much mail and money is moving, so ``/metrics`` answers only
a request that carries ``Authorization: Bearer <PEC_RENEWAL_METRICS_TOKEN>``;
with no token set it does not exist (404).  A source-address rule would not
do: behind a reverse proxy every request comes from the proxy.

The counters of what was sent and charged are the Celery worker's (its own
port, ``worker.metrics.serve_worker_metrics``); these gauges are read from the
database at each scrape, so they keep answering when no worker runs.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, abort, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.metrics import database_registry
from worker.web.runtime import runtime_of

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
def metrics() -> Response:
    runtime = runtime_of(current_app)
    token = runtime.settings.metrics_token
    if token is None:
        abort(404)
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        return Response(
            "unauthorized\n", 401, {"WWW-Authenticate": 'Bearer realm="metrics"', "Content-Type": "text/plain"}
        )
    registry = current_app.extensions.get("pec_metrics_registry")
    if registry is None:
        registry = database_registry(runtime.engine, runtime.settings, runtime.clock)
        current_app.extensions["pec_metrics_registry"] = registry
    return Response(generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST})
