"""``kma ui``: MLflow's own UI server, opening on the model-training view.

MLflow 3.17.2's frontend picks the sidebar's global "GenAI | Model training" view from
the URL's ``workflowType`` parameter, else from the browser's local storage key
``mlflow.workflowType_v1`` (its ``useLocalStorage({key: "mlflow.workflowType",
version: 1})`` stores ``"<key>_v<version>"``, JSON-encoded), else GenAI — never from the
experiment's ``mlflow.experimentKind`` tag, and no server setting changes it. So a click in
MLflow's own experiment list lands on GenAI's traces overview. ``kma ui`` runs the very
server ``mlflow ui`` runs (MLflow's Flask app behind its FastAPI/uvicorn front, started by
MLflow's ``_run_server`` with the same backend and artifact options) with one
``after_request`` hook: the UI's ``index.html`` gets a script that sets that key to
``"machine_learning"`` when the browser has none. A choice the user made in the switch
(the key set) is kept.
"""

from __future__ import annotations

WORKFLOW_KEY = "mlflow.workflowType_v1"
WORKFLOW_VALUE = "machine_learning"
SCRIPT = (f'<script>try{{if(window.localStorage.getItem("{WORKFLOW_KEY}")===null)'
          f'window.localStorage.setItem("{WORKFLOW_KEY}",JSON.stringify("{WORKFLOW_VALUE}"))}}catch(e){{}}</script>')


def inject(html: bytes) -> bytes:
    """``html`` with :data:`SCRIPT` first in its ``<head>`` (before MLflow's bundle runs);
    unchanged if it already has it or has no ``<head>``."""
    if SCRIPT.encode() in html:
        return html
    i = html.find(b"<head>")
    return html if i < 0 else html[:i + 6] + SCRIPT.encode() + html[i + 6:]


def install(flask_app) -> None:
    """Add the hook to MLflow's Flask app: every HTML page it serves (the UI's index) gets
    :data:`SCRIPT`."""
    from flask import request

    @flask_app.after_request
    def _model_training_first(response):
        if request.method == "GET" and response.status_code == 200 and response.mimetype == "text/html":
            response.direct_passthrough = False   # a file response: read it to rewrite it
            response.set_data(inject(response.get_data()))
        return response


def create_app():
    """The ASGI app uvicorn's workers load (``--factory``): MLflow's own, hooked."""
    from mlflow.server import app as flask_app
    from mlflow.server.fastapi_app import app

    install(flask_app)
    return app


def serve(backend_store_uri: str, *, host: str = "127.0.0.1", port: int = 5000, workers: int = 1,
          default_artifact_root: str | None = None, artifacts_destination: str = "./mlartifacts") -> None:
    """Run the UI server in the foreground as ``mlflow ui`` does (its store initialisation,
    its ``_run_server``, uvicorn), the app being :func:`create_app`."""
    import mlflow.server as srv
    from mlflow.server.handlers import initialize_backend_stores
    from mlflow.utils.server_cli_utils import resolve_default_artifact_root

    root = resolve_default_artifact_root(True, default_artifact_root, backend_store_uri)
    initialize_backend_stores(backend_store_uri, None, root)
    srv._find_app = lambda name: f"{__name__}:create_app"   # the app MLflow's runner starts
    srv._run_server(file_store_path=backend_store_uri, registry_store_uri=None, default_artifact_root=root,
                    serve_artifacts=True, artifacts_only=False, artifacts_destination=artifacts_destination,
                    host=host, port=port, workers=workers, app_name="kma")
