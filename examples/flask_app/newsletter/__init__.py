"""A Flask app factory with the garrison extension.

    cd examples/flask_app
    flask --app newsletter garrison db init
    flask --app newsletter garrison worker -P solo     # in another terminal
    flask --app newsletter run
    curl -X POST localhost:5000/subscribe -d email=ana@example.com -d list=weekly
    curl localhost:5000/subscribers/ana@example.com

With no other settings garrison uses its embedded default (SQLite and a broker folder under ./.garrison);
set GARRISON_DATABASE_URL / GARRISON_BROKER_URL (or the same keys in the config) for PostgreSQL and Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, jsonify, request
from flask.typing import ResponseReturnValue

from garrison.contrib.flask import Garrison
from garrison.errors import ValidationError

garrison = Garrison()
views = Blueprint("newsletter", __name__)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["GARRISON_AUTOMATIONS"] = ["newsletter.automations"]
    app.config.update(config or {})
    garrison.init_app(app)
    app.register_blueprint(views)
    return app


@views.post("/subscribe")
def subscribe() -> ResponseReturnValue:
    email = request.form.get("email", "")
    try:
        event = garrison.ingest(
            "app/newsletter.subscribed", email, {"email": email, "list": request.form.get("list", "weekly")}
        )
    except ValidationError as exc:  # e.g. an empty email: the key must not be empty
        return jsonify(error=exc.message, field=exc.field), 400
    return jsonify(event=event.id, seq=event.seq), 202


@views.get("/subscribers/<email>")
def subscriber(email: str) -> ResponseReturnValue:
    return jsonify(garrison.client.state("subscribers", email) or {"count": 0, "lists": []})
