"""The API's route modules, one per area; each exposes ``router(ctx) -> APIRouter``."""
from serving import ws
from serving.routes import (admin, data, deployments, explain, features, health, jobs, models,
                            monitoring, predict)

ROUTERS = [predict.router, deployments.router, models.router, features.router, jobs.router,
           data.router, explain.router, monitoring.router, admin.router, health.router, ws.router]
