"""`lumbarnode admin`: the web view of the job database (pages, JSON API, /metrics, /healthz).

- `app`: the FastAPI application (`create_app`);
- `metrics`: the Prometheus collector, read from the database at scrape time;
- `server`: `run_admin`, uvicorn on the configured address.
"""

from worker.admin.app import create_app
from worker.admin.metrics import quantile
from worker.admin.server import run_admin

__all__ = ["create_app", "quantile", "run_admin"]
