"""The API's route modules, one per area; each exposes ``router(ctx) -> APIRouter``."""
from serving.routes import deployments, explain, health, models, predict

ROUTERS = [predict.router, deployments.router, models.router, explain.router, health.router]
